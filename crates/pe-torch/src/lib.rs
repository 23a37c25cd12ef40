//! The libtorch features tch 0.24 does not expose, through a small C++ shim: autocast with a chosen
//! dtype ([`autocast`]), a GradScaler ([`scaler`]), channels_last ([`memory_format`]), fused
//! multi-tensor optimizers ([`optim`]), CUDA device/memory utilities ([`cuda`]) and CUDA graphs
//! with the side streams their capture needs ([`cuda_graph`]), and TorchScript freezing ([`jit`]).
//!
//! Everything takes and returns `tch::Tensor`; the only `unsafe` code is the private `ffi` module.
mod abi;
pub mod allocator;
pub mod autocast;
pub mod cuda;
pub mod cuda_graph;
mod ffi;
pub mod foreach;
pub mod jit;
pub mod memory_format;
pub mod optim;
pub mod scaler;

pub use autocast::{autocast, AutocastGuard};
pub use scaler::{GradScaler, GradScalerState};

/// Errors of this crate: libtorch errors (the C++ exception's message) and invalid arguments.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
