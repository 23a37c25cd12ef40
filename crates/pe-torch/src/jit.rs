//! TorchScript files: freezing, which libtorch's C++ API has and tch does not expose.

use std::path::Path;

use crate::Result;

/// Writes to `output` the module at `input` frozen in eval mode, as `torch.jit.freeze` does:
/// parameters and attributes become constants and the frozen-graph passes run, folding each
/// BatchNorm into the convolution before it and constant-folding what depends on weights alone.
/// Tied weights (a PE model's `W` and `Wᵀ`) may come out as separate constants: faster, larger.
pub fn freeze_file(input: &Path, output: &Path) -> Result<()> {
    crate::ffi::jit_freeze_file(input, output)
}
