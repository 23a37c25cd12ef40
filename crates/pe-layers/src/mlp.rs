//! Transformer feed-forward blocks: the standard two-matrix MLP and the paper's tied `PeMlp`.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::{init, Activation};

/// Shape and regularisation of a feed-forward block (`dim -> hidden -> dim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    pub dim: i64,
    pub hidden: i64,
    pub activation: Activation,
    /// Dropout after the activation and after the output projection (timm's `proj_drop`).
    pub drop: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { dim: 384, hidden: 1536, activation: Activation::Gelu, drop: 0.0 }
    }
}

impl MlpConfig {
    /// The standard block with two independent matrices (timm's `Mlp`: `fc1`, `fc2`).
    pub fn init(&self, path: nn::Path) -> Mlp {
        Mlp {
            fc1: init::vit_linear(&path / "fc1", self.dim, self.hidden, true),
            fc2: init::vit_linear(&path / "fc2", self.hidden, self.dim, true),
            activation: self.activation,
            drop: self.drop,
        }
    }

    /// The paper's block, eq. (4): one weight `W: [hidden, dim]` used as `W` and `Wᵀ`.
    pub fn init_pe(&self, path: nn::Path) -> PeMlp {
        PeMlp {
            weight: init::trunc_normal(&path, "weight", &[self.hidden, self.dim], init::VIT_STD),
            fc1_bias: path.zeros("fc1_bias", &[self.hidden]),
            fc2_bias: path.zeros("fc2_bias", &[self.dim]),
            activation: self.activation,
            drop: self.drop,
        }
    }
}

/// `fc2(drop(F(fc1 x)))` followed by dropout, as timm's `Mlp`.
#[derive(Debug)]
pub struct Mlp {
    pub fc1: nn::Linear,
    pub fc2: nn::Linear,
    pub activation: Activation,
    pub drop: f64,
}

impl Mlp {
    /// The output and the hidden activation `F(fc1 x + b₁)` that `fc2` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        // [.., dim] -> [.., hidden] -> [.., dim]
        let hidden = self.activation.apply(&xs.apply(&self.fc1)).dropout(self.drop, train);
        (hidden.apply(&self.fc2).dropout(self.drop, train), hidden)
    }
}

impl nn::ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with_hidden(xs, train).0
    }
}

/// `Wᵀ F(W x + b₁) + b₂`: half the weight parameters of [`Mlp`], same biases.
#[derive(Debug)]
pub struct PeMlp {
    /// The single matrix `W: [hidden, dim]`; its rows span the hidden space, its columns the input.
    pub weight: Tensor,
    pub fc1_bias: Tensor,
    pub fc2_bias: Tensor,
    pub activation: Activation,
    pub drop: f64,
}

impl PeMlp {
    /// The output and the hidden activation `F(W x + b₁)` that `Wᵀ` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        // [.., dim] -> W x + b₁ : [.., hidden]
        let hidden = xs.linear(&self.weight, Some(&self.fc1_bias));
        let hidden = self.activation.apply(&hidden).dropout(self.drop, train);
        // [.., hidden] -> Wᵀ h + b₂ : [.., dim]
        (hidden.linear(&self.weight.tr(), Some(&self.fc2_bias)).dropout(self.drop, train), hidden)
    }
}

impl nn::ModuleT for PeMlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with_hidden(xs, train).0
    }
}
