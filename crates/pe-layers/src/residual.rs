//! torchvision's ResNet building blocks (v1.5: the stride sits on the 3×3 conv), with
//! torchvision's parameter names so checkpoints round-trip with PyTorch.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::batch_norm::{batch_norm, BatchNorm};
use crate::conv::Conv;

/// Convolution followed by BatchNorm, stored as `<path>.0` / `<path>.1` like `nn.Sequential`
/// (torchvision's `downsample`).
#[derive(Debug)]
pub struct ConvBn {
    pub conv: Conv,
    pub bn: BatchNorm,
}

impl ConvBn {
    /// The 1×1 projection shortcut that changes channels and resolution.
    pub fn projection(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self {
            conv: Conv::new(&path / "0", c_in, c_out, 1, stride),
            bn: batch_norm(&path / "1", c_out, false),
        }
    }
}

impl nn::ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Geometry of one residual block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualConfig {
    pub in_channels: i64,
    /// Channels inside the block (the bottleneck width; for a basic block, its output).
    pub width: i64,
    pub out_channels: i64,
    pub stride: i64,
    /// Start the last BN of the residual branch at zero.
    #[serde(default)]
    pub zero_init_last_bn: bool,
}

impl ResidualConfig {
    fn needs_projection(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out_channels
    }

    fn downsample(&self, path: &nn::Path) -> Option<ConvBn> {
        self.needs_projection().then(|| {
            ConvBn::projection(path / "downsample", self.in_channels, self.out_channels, self.stride)
        })
    }

    /// torchvision's `Bottleneck`: 1×1 reduce, 3×3 (strided), 1×1 expand.
    pub fn bottleneck(&self, path: nn::Path) -> Bottleneck {
        Bottleneck {
            conv1: Conv::new(&path / "conv1", self.in_channels, self.width, 1, 1),
            bn1: batch_norm(&path / "bn1", self.width, false),
            conv2: Conv::new(&path / "conv2", self.width, self.width, 3, self.stride),
            bn2: batch_norm(&path / "bn2", self.width, false),
            conv3: Conv::new(&path / "conv3", self.width, self.out_channels, 1, 1),
            bn3: batch_norm(&path / "bn3", self.out_channels, self.zero_init_last_bn),
            downsample: self.downsample(&path),
        }
    }

    /// torchvision's `BasicBlock`: two 3×3 convs (the first strided); `width` must equal `out_channels`.
    pub fn basic(&self, path: nn::Path) -> BasicBlock {
        assert_eq!(self.width, self.out_channels, "a basic block has no bottleneck width");
        BasicBlock {
            conv1: Conv::new(&path / "conv1", self.in_channels, self.out_channels, 3, self.stride),
            bn1: batch_norm(&path / "bn1", self.out_channels, false),
            conv2: Conv::new(&path / "conv2", self.out_channels, self.out_channels, 3, 1),
            bn2: batch_norm(&path / "bn2", self.out_channels, self.zero_init_last_bn),
            downsample: self.downsample(&path),
        }
    }
}

/// Adds the (possibly projected) shortcut to a residual branch and applies the final ReLU, both in
/// the branch's own memory as torchvision does: `branch` is a BatchNorm output, which BatchNorm's
/// backward does not read, so overwriting it saves two activation-sized tensors per block.
fn close_residual(xs: &Tensor, mut branch: Tensor, downsample: Option<&ConvBn>, train: bool) -> Tensor {
    match downsample {
        Some(projection) => branch += projection.forward_t(xs, train),
        None => branch += xs,
    };
    branch.relu_()
}

#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: Conv,
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    pub conv3: Conv,
    pub bn3: BatchNorm,
    pub downsample: Option<ConvBn>,
}

impl Bottleneck {
    /// The output and the hidden activation `G(conv1 x)` that `conv3` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        // [B, C_in, H, W] -> [B, width, H, W] -> [B, width, H/s, W/s] -> [B, C_out, H/s, W/s]
        let branch = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu_();
        let hidden = branch.apply(&self.conv2).apply_t(&self.bn2, train).relu_();
        let branch = hidden.apply(&self.conv3).apply_t(&self.bn3, train);
        (close_residual(xs, branch, self.downsample.as_ref(), train), hidden)
    }
}

impl nn::ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with_hidden(xs, train).0
    }
}

#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: Conv,
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    pub downsample: Option<ConvBn>,
}

impl nn::ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        let branch = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu_();
        let branch = branch.apply(&self.conv2).apply_t(&self.bn2, train);
        close_residual(xs, branch, self.downsample.as_ref(), train)
    }
}
