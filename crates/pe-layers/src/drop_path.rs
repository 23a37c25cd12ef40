//! Stochastic depth: drop a residual branch for whole samples during training.

use tch::Tensor;

use crate::error::Error;

/// Per-sample drop of a residual branch with probability `prob`, rescaled by `1 / (1 - prob)`
/// so the expectation is unchanged (timm's `DropPath` with `scale_by_keep=True`).
/// Identity in eval mode and when `prob` is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropPath {
    pub prob: f64,
}

impl DropPath {
    pub fn new(prob: f64) -> Result<Self, Error> {
        if !(0.0..1.0).contains(&prob) {
            return Err(Error::DropPathProb(prob));
        }
        Ok(Self { prob })
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train || self.prob == 0.0 {
            return xs.shallow_clone();
        }
        let keep = 1.0 - self.prob;
        // One Bernoulli draw per sample, broadcast over every other dimension: [B, 1, 1, ...].
        let mut mask_shape = vec![1i64; xs.dim()];
        mask_shape[0] = xs.size()[0];
        let mask = Tensor::empty(mask_shape.as_slice(), (xs.kind(), xs.device())).bernoulli_float_(keep);
        xs * mask / keep
    }
}

/// Linearly increasing drop-path rates over `depth` blocks, from 0 to `max_rate` (timm's rule).
pub fn linear_rates(max_rate: f64, depth: usize) -> Vec<f64> {
    if depth <= 1 {
        return vec![0.0; depth];
    }
    (0..depth).map(|i| max_rate * i as f64 / (depth - 1) as f64).collect()
}
