//! A ResNet stage of PE bottlenecks sharing one `W` (the paper's eqs. 7–9).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::batch_norm::{batch_norm, BatchNorm};
use crate::conv::Conv;
use crate::error::Error;
use crate::residual::{ConvBn, ResidualConfig};
use crate::{Bottleneck, StageShared};

/// How a stage enters its channel count and resolution. The paper's eqs. 7–9 need the block
/// input to already have the stage's channels (`W x` with `W: [width, C]`) and say nothing about
/// the stage boundary, so both defensible readings are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstBlock {
    /// A 1×1 strided conv + BN (torchvision's `downsample`, here as a stage `transition`) maps the
    /// input to `C` channels at the new resolution; then all `n` blocks are PE blocks sharing `W`.
    /// Every block follows eq. 7–9; only the stage entrance adds parameters.
    #[default]
    Projection,
    /// Block 0 is a standard torchvision bottleneck (it changes channels and stride itself);
    /// blocks 1..n are PE blocks sharing `W`.
    Standard,
}

/// Geometry of a PE stage, mirroring a torchvision `layerN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeStageConfig {
    pub in_channels: i64,
    pub width: i64,
    pub out_channels: i64,
    pub blocks: usize,
    pub stride: i64,
    #[serde(default)]
    pub first_block: FirstBlock,
    #[serde(default)]
    pub zero_init_last_bn: bool,
}

impl PeStageConfig {
    /// Whether the stage enters through a projection (`transition`): with [`FirstBlock::Projection`]
    /// when its stride or channel count changes.
    pub fn has_projection(&self) -> bool {
        self.first_block == FirstBlock::Projection
            && (self.stride != 1 || self.in_channels != self.out_channels)
    }

    /// The index of the stage's first PE block (1 when block 0 is a standard bottleneck).
    pub fn first_pe_block(&self) -> usize {
        usize::from(self.first_block == FirstBlock::Standard)
    }

    /// Builds the stage under `path`: `shared_w`, then `transition.{0,1}` or block `0`
    /// (per [`FirstBlock`]), then PE blocks `k..n` named by their index as torchvision does.
    pub fn init(&self, path: nn::Path) -> Result<PeStage, Error> {
        if self.blocks == 0 {
            return Err(Error::EmptyStage);
        }
        let entry = match self.first_block {
            FirstBlock::Projection if !self.has_projection() => StageEntry::Identity,
            FirstBlock::Projection => StageEntry::Projection(ConvBn::projection(
                &path / "transition",
                self.in_channels,
                self.out_channels,
                self.stride,
            )),
            FirstBlock::Standard if self.blocks < 2 => return Err(Error::NoBlockToShare),
            FirstBlock::Standard => {
                let block = ResidualConfig {
                    in_channels: self.in_channels,
                    width: self.width,
                    out_channels: self.out_channels,
                    stride: self.stride,
                    zero_init_last_bn: self.zero_init_last_bn,
                };
                StageEntry::Standard(Box::new(block.bottleneck(&path / "0")))
            }
        };
        let shared_w = StageShared::new(&path, self.width, self.out_channels);
        let blocks = (self.first_pe_block()..self.blocks)
            .map(|index| {
                PeBottleneck::new(&path / index, self.width, self.out_channels, self.zero_init_last_bn)
            })
            .collect();
        Ok(PeStage { shared_w, entry, blocks })
    }
}

/// The per-block part of a PE bottleneck: `x + Wᵀ G_i(W x)` where `G_i` is the block's own
/// 3×3 conv + BN + ReLU, and the BNs after `W x` and `Wᵀ h` stay per block too.
#[derive(Debug)]
pub struct PeBottleneck {
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    pub bn3: BatchNorm,
}

impl PeBottleneck {
    fn new(path: nn::Path, width: i64, channels: i64, zero_init_last_bn: bool) -> Self {
        Self {
            bn1: batch_norm(&path / "bn1", width, false),
            conv2: Conv::new(&path / "conv2", width, width, 3, 1),
            bn2: batch_norm(&path / "bn2", width, false),
            bn3: batch_norm(&path / "bn3", channels, zero_init_last_bn),
        }
    }

    /// [B, C, H, W] -> [B, C, H, W], using the stage's `W` for both 1×1 convs.
    pub fn forward_t(&self, xs: &Tensor, shared: &StageShared, train: bool) -> Tensor {
        self.forward_with_hidden(xs, shared, train).0
    }

    /// The output and the hidden activation `G_i(W x)` that `Wᵀ` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, shared: &StageShared, train: bool) -> (Tensor, Tensor) {
        let branch = shared.reduce(xs).apply_t(&self.bn1, train).relu_();
        let hidden = branch.apply(&self.conv2).apply_t(&self.bn2, train).relu_();
        let mut branch = shared.expand(&hidden).apply_t(&self.bn3, train);
        // In place, as in `residual::close_residual`: BatchNorm's backward does not read its output.
        branch += xs;
        (branch.relu_(), hidden)
    }
}

/// How a stage enters its channel count and resolution (see [`FirstBlock`]).
#[derive(Debug)]
pub enum StageEntry {
    /// Same channels and resolution: the input goes straight to the PE blocks.
    Identity,
    /// A 1×1 strided conv + BN (`transition.{0,1}`) before the PE blocks.
    Projection(ConvBn),
    /// Block 0 is a standard bottleneck; the PE blocks are 1..n.
    Standard(Box<Bottleneck>),
}

/// A stage: its entrance, then PE blocks that all borrow `shared_w`.
#[derive(Debug)]
pub struct PeStage {
    pub shared_w: StageShared,
    pub entry: StageEntry,
    pub blocks: Vec<PeBottleneck>,
}

impl PeStage {
    /// The index of the stage's first PE block (1 when block 0 is a standard bottleneck).
    pub fn first_pe_block(&self) -> usize {
        usize::from(matches!(self.entry, StageEntry::Standard(_)))
    }

    /// The forward pass, handing each bottleneck's hidden activation to `probe` with the block's
    /// index as torchvision numbers it (for weight-space analysis).
    pub fn forward_probed(&self, xs: &Tensor, train: bool, probe: &mut dyn FnMut(usize, &Tensor)) -> Tensor {
        // [B, C_in, H, W] -> [B, C, H/s, W/s]
        let mut xs = match &self.entry {
            StageEntry::Identity => xs.shallow_clone(),
            StageEntry::Projection(transition) => transition.forward_t(xs, train),
            StageEntry::Standard(first) => {
                let (out, hidden) = first.forward_with_hidden(xs, train);
                probe(0, &hidden);
                out
            }
        };
        let first_pe = self.first_pe_block();
        for (offset, block) in self.blocks.iter().enumerate() {
            let (out, hidden) = block.forward_with_hidden(&xs, &self.shared_w, train);
            probe(first_pe + offset, &hidden);
            xs = out;
        }
        xs
    }
}

impl nn::ModuleT for PeStage {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_probed(xs, train, &mut |_, _| {})
    }
}
