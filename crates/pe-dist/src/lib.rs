//! Distributed data-parallel training on libtorch's own c10d, for tch: torchrun's environment
//! ([`DistEnv`]), Gloo/NCCL process groups with blocking collectives ([`ProcessGroup`]), DDP's
//! gradient [`Reducer`], and a one-machine torchrun replacement ([`launch`]).
//!
//! Everything distributed is c10d's (TCPStore, ProcessGroupGloo/NCCL, Reducer,
//! broadcast_coalesced); the only `unsafe` code is the private `ffi` module.
mod env;
mod error;
mod ffi;
mod group;
pub mod launch;
mod reducer;

pub use env::DistEnv;
pub use error::{Error, Result};
pub use group::{Backend, ProcessGroup, ReduceOp, BROADCAST_BUCKET_BYTES};
pub use launch::{launch, Ended, Launch};
pub use reducer::{CommStats, Reducer, ReducerOptions};
