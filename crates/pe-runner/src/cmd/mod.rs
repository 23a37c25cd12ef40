//! The `pe` subcommands: each parses its arguments and drives the library (`pe train` drives
//! [`crate::train`]).

pub mod analyze;
pub mod average;
pub mod bench;
pub mod convert;
pub mod eval;
pub mod export;
pub mod forward;
pub mod info;
pub mod launch;
pub mod predict;
pub mod prepare;
pub mod summary;
pub mod train;
