//! Automatic mixed precision regions (`torch.autocast`) for CPU and CUDA with a chosen dtype.
//!
//! ```no_run
//! # fn f(model: &impl tch::nn::Module, x: &tch::Tensor) -> pe_torch::Result<()> {
//! let logits = {
//!     let _amp = pe_torch::autocast(tch::Device::Cpu, tch::Kind::BFloat16)?;
//!     model.forward(x) // linear/conv run in bf16, softmax/losses stay f32
//! }; // previous autocast state restored, cast cache cleared
//! # Ok(()) }
//! ```
use std::marker::PhantomData;

use tch::{Device, Kind};

use crate::abi::{DeviceType, ScalarType};
use crate::{ffi, Error, Result};

/// The device type of `device` if autocast supports it.
fn device_type(device: Device) -> Result<DeviceType> {
    DeviceType::of_device(device)
        .ok_or_else(|| Error::Invalid(format!("autocast supports CPU and CUDA, not {device:?}")))
}

/// An active autocast region; dropping it restores the previous state (enabled flag and dtype) of
/// that device type and, when it closes the outermost region, clears the autocast weight-cast cache.
///
/// Autocast state is thread-local in libtorch, so the guard is neither `Send` nor `Sync`.
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device_type: DeviceType,
    prev_enabled: bool,
    prev_dtype: ScalarType,
    _thread_bound: PhantomData<*const ()>,
}

/// Enters an autocast region for `device`'s type (CPU, or CUDA of any index) with `dtype`
/// (`Kind::BFloat16` or `Kind::Half`), like `torch.autocast(device_type, dtype)`.
pub fn autocast(device: Device, dtype: Kind) -> Result<AutocastGuard> {
    let device_type = device_type(device)?;
    let code = match dtype {
        Kind::BFloat16 | Kind::Half => ScalarType::of_kind(dtype),
        _ => None,
    }
    .ok_or_else(|| Error::Invalid(format!("autocast dtype must be BFloat16 or Half, got {dtype:?}")))?;
    let (prev_enabled, prev_dtype) = ffi::autocast_state(device_type)?;
    ffi::autocast_enter(device_type, code)?;
    Ok(AutocastGuard { device_type, prev_enabled, prev_dtype, _thread_bound: PhantomData })
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // Only fails on invalid codes, which `autocast` already validated.
        if let Err(e) = ffi::autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype) {
            tracing::warn!("leaving autocast failed: {e}");
        }
    }
}

/// Whether autocast is active for `device`'s type on this thread.
pub fn is_enabled(device: Device) -> Result<bool> {
    Ok(ffi::autocast_state(device_type(device)?)?.0)
}

/// The dtype autocast uses (or would use) for `device`'s type on this thread.
pub fn dtype(device: Device) -> Result<Kind> {
    Ok(ffi::autocast_state(device_type(device)?)?.1.kind())
}

/// Whether autocast caches the low-precision casts of weights within a region (thread-local,
/// `torch.is_autocast_cache_enabled()`; on by default).
pub fn is_cache_enabled() -> Result<bool> {
    ffi::autocast_cache_enabled()
}

/// Turns autocast's weight-cast cache off until dropped, then restores the previous setting
/// (`torch.autocast(..., cache_enabled=False)` for a whole stretch of code).
///
/// CUDA graph capture needs this, as `torch.cuda.graph` arranges: a cached cast outlives the op that
/// made it, so a capture would either reuse a cast made before capture (stale weights on every
/// replay) or keep one allocated from the graph's private pool after the capture ends. Without the
/// cache each use casts afresh inside the graph. Thread-bound, like autocast state itself.
#[must_use = "the cache is re-enabled when the guard is dropped"]
pub struct CacheDisabled {
    previous: bool,
    _thread_bound: PhantomData<*const ()>,
}

/// Disables the autocast weight-cast cache on this thread until the guard is dropped.
pub fn disable_cache() -> Result<CacheDisabled> {
    let previous = ffi::autocast_cache_enabled()?;
    ffi::autocast_set_cache_enabled(false)?;
    Ok(CacheDisabled { previous, _thread_bound: PhantomData })
}

impl Drop for CacheDisabled {
    fn drop(&mut self) {
        if let Err(e) = ffi::autocast_set_cache_enabled(self.previous) {
            tracing::warn!("restoring the autocast cache setting failed: {e}");
        }
    }
}
