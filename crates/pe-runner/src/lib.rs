//! The `pe` runner as a library: experiment configs, the training run ([`train`]) and the
//! subcommands ([`cmd`]), so integration tests can drive the same code the binary runs.

pub mod cmd;
pub mod config;
pub mod device;
pub mod eval;
pub mod train;
