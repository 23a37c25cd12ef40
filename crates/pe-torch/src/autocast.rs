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

use crate::{ffi, kind_of_scalar_type_code, scalar_type_code, Error, Result};

/// libtorch's DeviceType code of the devices autocast supports.
fn device_type_code(device: Device) -> Result<i32> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(Error::Invalid(format!("autocast supports CPU and CUDA, not {other:?}"))),
    }
}

/// An active autocast region; dropping it restores the previous state (enabled flag and dtype) of
/// that device type and, when it closes the outermost region, clears the autocast weight-cast cache.
///
/// Autocast state is thread-local in libtorch, so the guard is neither `Send` nor `Sync`.
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device_type: i32,
    prev_enabled: bool,
    prev_dtype: i32,
    _thread_bound: PhantomData<*const ()>,
}

/// Enters an autocast region for `device`'s type (CPU, or CUDA of any index) with `dtype`
/// (`Kind::BFloat16` or `Kind::Half`), like `torch.autocast(device_type, dtype)`.
pub fn autocast(device: Device, dtype: Kind) -> Result<AutocastGuard> {
    let device_type = device_type_code(device)?;
    let code = match dtype {
        Kind::BFloat16 | Kind::Half => scalar_type_code(dtype),
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
            eprintln!("pe-torch: leaving autocast failed: {e}");
        }
    }
}

/// Whether autocast is active for `device`'s type on this thread.
pub fn is_enabled(device: Device) -> Result<bool> {
    Ok(ffi::autocast_state(device_type_code(device)?)?.0)
}

/// The dtype autocast uses (or would use) for `device`'s type on this thread.
pub fn dtype(device: Device) -> Result<Kind> {
    let code = ffi::autocast_state(device_type_code(device)?)?.1;
    kind_of_scalar_type_code(code)
        .ok_or_else(|| Error::Torch(format!("unexpected autocast dtype code {code}")))
}
