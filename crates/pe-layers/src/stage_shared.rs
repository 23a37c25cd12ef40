//! The one matrix a PE ResNet stage shares between all of its bottlenecks.

use tch::{nn, Tensor};

use crate::conv::{per_pixel, per_pixel_transposed, runs_as_gemm};
use crate::init;

/// `W: [width, channels]`, owned by a stage and borrowed by each of its blocks: as a 1×1 conv it
/// reduces `channels -> width` (`W x`); its transpose expands `width -> channels` (`Wᵀ h`).
/// Registered once, so the optimizer sees one parameter whose gradient sums over every use.
#[derive(Debug)]
pub struct StageShared {
    pub weight: Tensor,
}

impl StageShared {
    /// Registers `<path>.shared_w`, initialised as torchvision initialises the 1×1 reduce conv
    /// it replaces (kaiming normal, fan-out = width).
    pub fn new(path: &nn::Path, width: i64, channels: i64) -> Self {
        Self { weight: path.var("shared_w", &[width, channels], init::kaiming_normal_fan_out(width)) }
    }

    pub fn width(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn channels(&self) -> i64 {
        self.weight.size()[1]
    }

    /// `W` as a view rather than the leaf, for the products: autocast caches the cast of a leaf and
    /// would add the blocks' gradients up in bf16 (3× the error of the fp32 sum, measured in
    /// tests/conv.rs); a view is cast per use and its gradients add up in fp32, as with 1×1 convs.
    fn per_use(&self) -> Tensor {
        self.weight.alias()
    }

    /// `W x`: [B, channels, H, W] -> [B, width, H, W]
    pub fn reduce(&self, xs: &Tensor) -> Tensor {
        if runs_as_gemm(xs.device(), pixels(xs)) {
            return per_pixel(xs, &self.per_use());
        }
        let kernel = self.weight.view([self.width(), self.channels(), 1, 1]);
        xs.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
    }

    /// `Wᵀ h`: [B, width, H, W] -> [B, channels, H, W]
    pub fn expand(&self, hs: &Tensor) -> Tensor {
        if runs_as_gemm(hs.device(), pixels(hs)) {
            return per_pixel_transposed(hs, &self.per_use());
        }
        let kernel = self.weight.tr().reshape([self.channels(), self.width(), 1, 1]);
        hs.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
    }
}

/// Pixels per image of a [B, C, H, W] map.
fn pixels(xs: &Tensor) -> i64 {
    xs.size()[2..].iter().product()
}
