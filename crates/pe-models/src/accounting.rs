//! Per-layer parameter and multiply-accumulate accounting, the columns of the paper's tables.
//!
//! Each model lists its layers with their shapes at a given input size; totals are sums over that
//! list. Norm layers count parameters but no MACs, activations and pooling count nothing (the
//! convention of fvcore and of torchvision's published GFLOPS, which are MACs).

use serde::Serialize;

/// One layer's cost. A layer that reuses another's weights (the PE `Wᵀ`) has MACs and no params.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub name: String,
    pub params: i64,
    pub macs: i64,
}

impl Cost {
    pub fn param(name: String, params: i64) -> Self {
        Self { name, params, macs: 0 }
    }

    pub fn macs(name: String, macs: i64) -> Self {
        Self { name, params: 0, macs }
    }
}

/// The list of layer costs of one model at one input size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CostSheet {
    pub layers: Vec<Cost>,
    /// Name prefixes of the classifier head, excluded by "without head" counts.
    pub head: Vec<String>,
}

impl CostSheet {
    pub fn push(&mut self, cost: Cost) {
        self.layers.push(cost);
    }

    /// A bias-free conv producing an `h × w` output.
    pub fn conv(&mut self, name: &str, c_in: i64, c_out: i64, kernel: i64, h: i64, w: i64) {
        let params = c_in * c_out * kernel * kernel;
        self.push(Cost { name: name.to_owned(), params, macs: params * h * w });
    }

    /// A conv with bias (ViT's patch embedding).
    pub fn conv_with_bias(&mut self, name: &str, c_in: i64, c_out: i64, kernel: i64, h: i64, w: i64) {
        self.conv(name, c_in, c_out, kernel, h, w);
        self.push(Cost::param(format!("{name}.bias"), c_out));
    }

    /// BatchNorm or LayerNorm with an affine scale and shift.
    pub fn norm(&mut self, name: &str, channels: i64) {
        self.push(Cost::param(name.to_owned(), 2 * channels));
    }

    /// A linear layer with bias applied to `tokens` vectors.
    pub fn linear(&mut self, name: &str, in_dim: i64, out_dim: i64, tokens: i64) {
        self.push(Cost {
            name: name.to_owned(),
            params: in_dim * out_dim + out_dim,
            macs: in_dim * out_dim * tokens,
        });
    }

    pub fn mark_head(&mut self, prefix: &str) {
        self.head.push(prefix.to_owned());
    }

    fn is_head(&self, cost: &Cost) -> bool {
        self.head.iter().any(|prefix| cost.name == *prefix || cost.name.starts_with(&format!("{prefix}.")))
    }

    pub fn params(&self) -> i64 {
        self.layers.iter().map(|c| c.params).sum()
    }

    pub fn head_params(&self) -> i64 {
        self.layers.iter().filter(|c| self.is_head(c)).map(|c| c.params).sum()
    }

    pub fn params_without_head(&self) -> i64 {
        self.params() - self.head_params()
    }

    pub fn macs(&self) -> i64 {
        self.layers.iter().map(|c| c.macs).sum()
    }
}
