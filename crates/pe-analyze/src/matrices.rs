//! The weight matrices of a model, each as `[out, in]`, and the pairs the paper ties.
//!
//! Convolutions become matrices as their linear maps act on one position: a 1×1 conv is its
//! `[out, in]` kernel; a k×k conv is reshaped to `[out, in·k·k]` (its im2col matrix), which the
//! output labels as such. Biases, norms and embeddings are not matrices and are left out.

use serde::Serialize;
use tch::{Kind, Tensor};

use pe_layers::{Bottleneck, PeStage, StageEntry};
use pe_models::resnet::Stage;
use pe_models::vit::{AnyAttention, AnyMlp};
use pe_models::{Model, ResNet, Vit};

/// Which part of the network a matrix belongs to; summaries group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Stem,
    Attention,
    Mlp,
    /// The 1×1 reduce/expand convs of a bottleneck (or the stage-shared `W` replacing them).
    Bottleneck1x1,
    /// 3×3 convs inside residual blocks.
    Conv3x3,
    /// Projection shortcuts (`downsample`, a PE stage's `transition`).
    Shortcut,
    Head,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Stem => "stem",
            Role::Attention => "attention",
            Role::Mlp => "mlp",
            Role::Bottleneck1x1 => "bottleneck 1×1",
            Role::Conv3x3 => "3×3 conv",
            Role::Shortcut => "shortcut",
            Role::Head => "head",
        }
    }
}

/// How the `[out, in]` matrix was obtained from the stored weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Layout {
    /// A linear layer's weight.
    Linear,
    /// One third (q, k or v) of timm's fused `qkv` weight.
    FusedSlice,
    /// A 1×1 convolution's kernel.
    Conv1x1,
    /// A k×k convolution reshaped to `[out, in·k·k]`.
    ConvReshaped { kh: i64, kw: i64 },
    /// The paper's tied matrix, used as `W` and as `Wᵀ`.
    Tied,
}

impl Layout {
    pub fn label(self) -> String {
        match self {
            Layout::Linear => "linear".into(),
            Layout::FusedSlice => "qkv slice".into(),
            Layout::Conv1x1 => "1×1 conv".into(),
            Layout::ConvReshaped { kh, kw } => format!("{kh}×{kw} conv as [out, in·{kh}·{kw}]"),
            Layout::Tied => "tied W/Wᵀ".into(),
        }
    }
}

/// One weight matrix, detached, float32 on the CPU.
#[derive(Debug)]
pub struct WeightMatrix {
    /// The variable's name (a qkv slice gets `.q`/`.k`/`.v` appended).
    pub name: String,
    pub role: Role,
    pub layout: Layout,
    /// `[out, in]`.
    pub weight: Tensor,
}

impl WeightMatrix {
    pub fn rows(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn cols(&self) -> i64 {
        self.weight.size()[1]
    }
}

/// Which two maps the paper ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    /// `fc1` / `fc2` of a transformer MLP.
    MlpFc1Fc2,
    /// `W_q` / the output projection.
    AttnQProj,
    /// `W_k` / `W_v`.
    AttnKv,
    /// A bottleneck's 1×1 `conv1` / `conv3`.
    BottleneckConv1Conv3,
}

impl PairKind {
    pub fn label(self) -> &'static str {
        match self {
            PairKind::MlpFc1Fc2 => "mlp fc1/fc2",
            PairKind::AttnQProj => "attn q/proj",
            PairKind::AttnKv => "attn k/v",
            PairKind::BottleneckConv1Conv3 => "bottleneck conv1/conv3",
        }
    }
}

/// `W₁` writes a hidden space, `W₂` reads it; the paper sets `W₂ = W₁ᵀ`.
#[derive(Debug, Clone)]
pub struct TiePair {
    /// The block, e.g. `blocks.3.mlp`, `layer2.1`.
    pub name: String,
    pub kind: PairKind,
    /// Index of `W₁` in [`Matrices::matrices`].
    pub first: usize,
    /// Index of `W₂`, or `None` when the layer uses `W₁ᵀ` (a PE layer).
    pub second: Option<usize>,
    /// The hidden activation `W₂` reads, as [`Model::forward_probed`] names it.
    pub probe: Option<String>,
}

/// A model's matrices in forward order, and its tie pairs.
#[derive(Debug, Default)]
pub struct Matrices {
    pub matrices: Vec<WeightMatrix>,
    pub pairs: Vec<TiePair>,
}

impl Matrices {
    pub fn of(model: &Model) -> Self {
        let mut out = Self::default();
        tch::no_grad(|| match model {
            Model::Resnet(resnet) => out.resnet(resnet),
            Model::Vit(vit) => out.vit(vit),
        });
        out
    }

    fn push(&mut self, name: String, role: Role, layout: Layout, weight: &Tensor) -> usize {
        let weight = weight.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu);
        let weight = weight.reshape([weight.size()[0], -1]).contiguous();
        self.matrices.push(WeightMatrix { name, role, layout, weight });
        self.matrices.len() - 1
    }

    fn conv(&mut self, name: String, role: Role, weight: &Tensor) -> usize {
        let size = weight.size();
        let layout = match (size[2], size[3]) {
            (1, 1) => Layout::Conv1x1,
            (kh, kw) => Layout::ConvReshaped { kh, kw },
        };
        self.push(format!("{name}.weight"), role, layout, weight)
    }

    fn pair(
        &mut self,
        name: String,
        kind: PairKind,
        first: usize,
        second: Option<usize>,
        probe: Option<String>,
    ) {
        self.pairs.push(TiePair { name, kind, first, second, probe });
    }

    fn resnet(&mut self, model: &ResNet) {
        self.conv("conv1".into(), Role::Stem, &model.conv1.ws);
        for (s, stage) in model.stages.iter().enumerate() {
            let prefix = format!("layer{}", s + 1);
            match stage {
                Stage::Basic(blocks) => {
                    for (b, block) in blocks.iter().enumerate() {
                        let name = format!("{prefix}.{b}");
                        self.conv(format!("{name}.conv1"), Role::Conv3x3, &block.conv1.ws);
                        self.conv(format!("{name}.conv2"), Role::Conv3x3, &block.conv2.ws);
                        if let Some(down) = &block.downsample {
                            self.conv(format!("{name}.downsample.0"), Role::Shortcut, &down.conv.ws);
                        }
                    }
                }
                Stage::Bottleneck(blocks) => {
                    for (b, block) in blocks.iter().enumerate() {
                        self.bottleneck(format!("{prefix}.{b}"), block);
                    }
                }
                Stage::Pe(stage) => self.pe_stage(&prefix, stage),
            }
        }
        self.push("fc.weight".into(), Role::Head, Layout::Linear, &model.fc.ws);
    }

    fn bottleneck(&mut self, name: String, block: &Bottleneck) {
        let conv1 = self.conv(format!("{name}.conv1"), Role::Bottleneck1x1, &block.conv1.ws);
        self.conv(format!("{name}.conv2"), Role::Conv3x3, &block.conv2.ws);
        let conv3 = self.conv(format!("{name}.conv3"), Role::Bottleneck1x1, &block.conv3.ws);
        if let Some(down) = &block.downsample {
            self.conv(format!("{name}.downsample.0"), Role::Shortcut, &down.conv.ws);
        }
        self.pair(name.clone(), PairKind::BottleneckConv1Conv3, conv1, Some(conv3), Some(name));
    }

    fn pe_stage(&mut self, prefix: &str, stage: &PeStage) {
        match &stage.entry {
            StageEntry::Identity => {}
            StageEntry::Projection(transition) => {
                self.conv(format!("{prefix}.transition.0"), Role::Shortcut, &transition.conv.ws);
            }
            StageEntry::Standard(first) => self.bottleneck(format!("{prefix}.0"), first),
        }
        let shared = self.push(
            format!("{prefix}.shared_w"),
            Role::Bottleneck1x1,
            Layout::Tied,
            &stage.shared_w.weight,
        );
        let first_pe = stage.first_pe_block();
        for (offset, block) in stage.blocks.iter().enumerate() {
            let name = format!("{prefix}.{}", first_pe + offset);
            self.conv(format!("{name}.conv2"), Role::Conv3x3, &block.conv2.ws);
            self.pair(name.clone(), PairKind::BottleneckConv1Conv3, shared, None, Some(name));
        }
    }

    fn vit(&mut self, model: &Vit) {
        self.conv("patch_embed.proj".into(), Role::Stem, &model.patch_embed.ws);
        for (i, block) in model.blocks.iter().enumerate() {
            let prefix = format!("blocks.{i}");
            let attn_probe = Some(format!("{prefix}.attn"));
            match &block.attn {
                AnyAttention::Standard(attn) => {
                    let qkv = attn.qkv.ws.chunk(3, 0);
                    let [q, k, v] = ["q", "k", "v"].map(|part| format!("{prefix}.attn.qkv.weight.{part}"));
                    let q = self.push(q, Role::Attention, Layout::FusedSlice, &qkv[0]);
                    let k = self.push(k, Role::Attention, Layout::FusedSlice, &qkv[1]);
                    let v = self.push(v, Role::Attention, Layout::FusedSlice, &qkv[2]);
                    let proj = self.push(
                        format!("{prefix}.attn.proj.weight"),
                        Role::Attention,
                        Layout::Linear,
                        &attn.proj.ws,
                    );
                    self.pair(format!("{prefix}.attn"), PairKind::AttnQProj, q, Some(proj), attn_probe);
                    self.pair(format!("{prefix}.attn"), PairKind::AttnKv, k, Some(v), None);
                }
                AnyAttention::Pe(attn) => {
                    let wq = self.push(format!("{prefix}.attn.wq"), Role::Attention, Layout::Tied, &attn.wq);
                    let wkv =
                        self.push(format!("{prefix}.attn.wkv"), Role::Attention, Layout::Tied, &attn.wkv);
                    self.pair(format!("{prefix}.attn"), PairKind::AttnQProj, wq, None, attn_probe);
                    self.pair(format!("{prefix}.attn"), PairKind::AttnKv, wkv, None, None);
                }
            }
            let mlp_probe = Some(format!("{prefix}.mlp"));
            match &block.mlp {
                AnyMlp::Standard(mlp) => {
                    let fc1 =
                        self.push(format!("{prefix}.mlp.fc1.weight"), Role::Mlp, Layout::Linear, &mlp.fc1.ws);
                    let fc2 =
                        self.push(format!("{prefix}.mlp.fc2.weight"), Role::Mlp, Layout::Linear, &mlp.fc2.ws);
                    self.pair(format!("{prefix}.mlp"), PairKind::MlpFc1Fc2, fc1, Some(fc2), mlp_probe);
                }
                AnyMlp::Pe(mlp) => {
                    let w = self.push(format!("{prefix}.mlp.weight"), Role::Mlp, Layout::Tied, &mlp.weight);
                    self.pair(format!("{prefix}.mlp"), PairKind::MlpFc1Fc2, w, None, mlp_probe);
                }
            }
        }
        self.push("head.weight".into(), Role::Head, Layout::Linear, &model.head.ws);
    }
}
