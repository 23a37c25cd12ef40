//! The pointwise non-linearity `F` between `W` and `Wᵀ`, selectable by name from configs.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Activation functions used by the MLP layers. Names match what timm users write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, timm's `nn.GELU` default for ViT/DeiT.
    #[default]
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluTanh => xs.gelu("tanh"),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}
