//! Multi-tensor operations (`torch._foreach_*`): one kernel launch per chunk of a tensor list
//! rather than one or two per tensor, which on a GPU is the difference between a few launches and
//! several hundred per step for EMA and gradient clipping.

use tch::Tensor;

use crate::{ffi, Result};

/// `selfs[i] += weight * (ends[i] - selfs[i])` for every pair, without autograd (EMA:
/// `weight = 1 - decay`). Pairs must match in shape, dtype and device.
pub fn lerp_(selfs: &[&Tensor], ends: &[&Tensor], weight: f64) -> Result<()> {
    ffi::foreach_lerp_(selfs, ends, weight)
}

/// `selfs[i] += weight * (ends[i] - selfs[i])` with a 0-dim `weight` tensor read on the device, so
/// the weight can depend on device values (an EMA step skipped when fp16 gradients overflowed) and
/// a captured CUDA graph sees each step's value. Pairs must match in shape, dtype and device.
pub fn lerp_tensor_(selfs: &[&Tensor], ends: &[&Tensor], weight: &Tensor) -> Result<()> {
    ffi::foreach_lerp_tensor_(selfs, ends, weight)
}

/// Each tensor's L2 norm as a float32 scalar on its device (nothing is read back to the host).
pub fn norm(tensors: &[&Tensor]) -> Result<Vec<Tensor>> {
    ffi::foreach_norm(tensors)
}

/// Multiplies every tensor in place by the 0-dim `factor`, which stays on the device.
pub fn mul_(tensors: &[&Tensor], factor: &Tensor) -> Result<()> {
    ffi::foreach_mul_(tensors, factor)
}
