//! channels_last (NHWC strides) for input batches and conv weights, as `x.to(memory_format=...)`
//! and `model.to(memory_format=torch.channels_last)` do in PyTorch.
use tch::{nn::VarStore, Tensor};

use crate::{ffi, Result};

/// A tensor's memory layout as libtorch classifies it; the values are `c10::MemoryFormat`'s, shared
/// with the C++ shim (which `static_assert`s them).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFormat {
    Contiguous = 0,
    ChannelsLast = 2,
    ChannelsLast3d = 3,
}

impl MemoryFormat {
    /// The value for a code the shim wrote.
    pub(crate) fn from_code(code: i32) -> Option<Self> {
        [Self::Contiguous, Self::ChannelsLast, Self::ChannelsLast3d].into_iter().find(|f| *f as i32 == code)
    }
}

/// `t.contiguous(memory_format)`: a copy in that layout, or `t` itself when it already is.
pub fn to_memory_format(t: &Tensor, format: MemoryFormat) -> Result<Tensor> {
    ffi::contiguous_format(t, format)
}

/// `t.contiguous(memory_format=torch.channels_last)` for a 4-D tensor.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    to_memory_format(t, MemoryFormat::ChannelsLast)
}

/// `t.is_contiguous(memory_format=torch.channels_last)`.
pub fn is_channels_last(t: &Tensor) -> Result<bool> {
    ffi::is_contiguous_format(t, MemoryFormat::ChannelsLast)
}

/// The layout libtorch infers from `t`'s strides (`suggest_memory_format`), what convolutions use
/// to choose their output layout.
pub fn memory_format(t: &Tensor) -> Result<MemoryFormat> {
    ffi::suggest_memory_format(t)
}

/// Converts in place every 4-D variable of `vs` (conv weights) to channels_last, keeping the
/// variables themselves (names, `requires_grad`, and every shallow clone, e.g. an optimizer's
/// parameter list) and swapping only their storage, as `module.to(memory_format=...)` does.
/// Returns how many variables were converted.
pub fn convert_conv_weights_(vs: &VarStore) -> Result<usize> {
    let mut converted = 0;
    for (_, var) in vs.variables() {
        if var.dim() == 4 && !is_channels_last(&var)? {
            let data = tch::no_grad(|| to_channels_last(&var.detach()))?;
            ffi::set_data(&var, &data)?;
            converted += 1;
        }
    }
    Ok(converted)
}

/// Sets `t.grad` to None (PyTorch's `zero_grad(set_to_none=True)`): the next backward allocates a
/// fresh gradient in the parameter's layout instead of accumulating into a zeroed one.
pub fn reset_grad(t: &Tensor) -> Result<()> {
    ffi::reset_grad(t)
}
