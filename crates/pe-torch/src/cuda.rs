//! CUDA device and caching-allocator utilities (`torch.cuda.*`). On a CPU-only machine
//! [`device_count`] is 0 and the others return a clear "CUDA is not available" error.
use tch::Device;

use crate::{ffi, Error, Result};

/// Number of visible CUDA devices (0 without CUDA).
pub fn device_count() -> Result<usize> {
    Ok(usize::try_from(ffi::cuda_device_count()?).unwrap_or(0))
}

/// Whether any CUDA device is usable.
pub fn is_available() -> bool {
    device_count().is_ok_and(|n| n > 0)
}

/// `torch.cuda.set_device(index)`: the device new CUDA tensors and kernels use on this thread.
pub fn set_device(index: usize) -> Result<()> {
    ffi::cuda_set_device(index as i64)
}

/// `torch.cuda.current_device()`.
pub fn current_device() -> Result<usize> {
    Ok(ffi::cuda_current_device()? as usize)
}

/// Bytes in use by and reserved for the caching allocator of one device, current and peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub allocated: u64,
    pub max_allocated: u64,
    pub reserved: u64,
    pub max_reserved: u64,
}

/// Allocator statistics of CUDA device `index` (`torch.cuda.memory_stats`, aggregate pool).
pub fn memory_stats(index: usize) -> Result<MemoryStats> {
    let [a, b, c, d] = ffi::cuda_memory_stats(index as i64)?;
    let u = |v: i64| v.max(0) as u64;
    Ok(MemoryStats { allocated: u(a), max_allocated: u(b), reserved: u(c), max_reserved: u(d) })
}

/// `torch.cuda.max_memory_allocated(index)`: peak bytes held by tensors since start or the last reset.
pub fn max_memory_allocated(index: usize) -> Result<u64> {
    Ok(memory_stats(index)?.max_allocated)
}

/// `torch.cuda.memory_allocated(index)`.
pub fn memory_allocated(index: usize) -> Result<u64> {
    Ok(memory_stats(index)?.allocated)
}

/// `torch.cuda.reset_peak_memory_stats(index)`.
pub fn reset_peak_memory_stats(index: usize) -> Result<()> {
    ffi::cuda_reset_peak_memory_stats(index as i64)
}

/// `torch.cuda.empty_cache()`: returns cached, unused blocks to the driver.
pub fn empty_cache() -> Result<()> {
    ffi::cuda_empty_cache()
}

/// `torch.cuda.synchronize(index)`: waits for all kernels on that device (for timing).
pub fn synchronize(index: usize) -> Result<()> {
    ffi::cuda_synchronize(index as i64)
}

/// Waits for `device`'s queued work: a no-op on CPU.
pub fn synchronize_device(device: Device) -> Result<()> {
    match device {
        Device::Cuda(i) => synchronize(i),
        Device::Cpu => Ok(()),
        other => Err(Error::Invalid(format!("synchronize: unsupported device {other:?}"))),
    }
}
