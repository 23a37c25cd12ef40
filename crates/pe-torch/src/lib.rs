//! The libtorch features tch 0.24 does not expose, through a small C++ shim: autocast with a chosen
//! dtype ([`autocast`]), a GradScaler ([`scaler`]), channels_last ([`memory_format`]), fused
//! multi-tensor optimizers ([`optim`]) and CUDA device/memory utilities ([`cuda`]).
//!
//! Everything takes and returns `tch::Tensor`; the only `unsafe` code is the private `ffi` module.
pub mod autocast;
pub mod cuda;
mod ffi;
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

/// libtorch's `c10::ScalarType` code of the kinds this crate passes to the shim.
pub(crate) fn scalar_type_code(kind: tch::Kind) -> Option<i32> {
    use tch::Kind;
    Some(match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::BFloat16 => 15,
        _ => return None,
    })
}

pub(crate) fn kind_of_scalar_type_code(code: i32) -> Option<tch::Kind> {
    use tch::Kind;
    Some(match code {
        5 => Kind::Half,
        6 => Kind::Float,
        7 => Kind::Double,
        15 => Kind::BFloat16,
        _ => return None,
    })
}
