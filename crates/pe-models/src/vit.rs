//! DeiT/ViT as timm builds them (`deit_*_patch16_224`), and ViT-PE: every block's attention
//! and MLP replaced by the tied `PeAttention` / `PeMlp` (the paper's Section 3.1).
//!
//! With `distilled`, DeiT's distillation token rides beside the class token and feeds a second head
//! (timm's `deit_*_distilled_patch16_224`: `dist_token`, `head_dist`); the model's logits are the
//! two heads' mean, and training with a teacher reads the heads apart ([`Vit::forward_heads`]).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use pe_layers::{drop_path, init, Activation, Attention, AttentionConfig, DropPath, Mlp, MlpConfig};
use pe_layers::{PeAttention, PeMlp};

use crate::accounting::{Cost, CostSheet};
use crate::error::Error;
use crate::init::torch_default_conv;

/// timm's ViT LayerNorm epsilon.
const LN_EPS: f64 = 1e-6;

/// Everything that defines a ViT; presets are [`VitConfig::deit_small`] and friends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub img_size: i64,
    pub patch_size: i64,
    pub in_channels: i64,
    pub num_classes: i64,
    pub embed_dim: i64,
    pub depth: usize,
    pub heads: i64,
    pub mlp_ratio: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Tied attention (`W_q`, `W_kv`) in every block.
    #[serde(default)]
    pub pe_attention: bool,
    /// Tied MLP (`W`, `Wᵀ`) in every block.
    #[serde(default)]
    pub pe_mlp: bool,
    /// Dropout after the position embedding, in the MLP and after projections.
    #[serde(default)]
    pub drop_rate: f64,
    #[serde(default)]
    pub attn_drop_rate: f64,
    /// Stochastic depth of the last block; block i gets `drop_path_rate × i / (depth − 1)`.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// DeiT's distillation token and its head (timm's `dist_token`, `head_dist`).
    #[serde(default)]
    pub distilled: bool,
}

fn yes() -> bool {
    true
}

impl VitConfig {
    fn deit(embed_dim: i64, heads: i64) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_channels: 3,
            num_classes: 1000,
            embed_dim,
            depth: 12,
            heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            pe_attention: false,
            pe_mlp: false,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            distilled: false,
        }
    }

    pub fn deit_tiny() -> Self {
        Self::deit(192, 3)
    }

    pub fn deit_small() -> Self {
        Self::deit(384, 6)
    }

    /// The given geometry with both attention and MLP tied (the paper's ViT-PE).
    pub fn pe(self) -> Self {
        Self { pe_attention: true, pe_mlp: true, ..self }
    }

    /// The given geometry with DeiT's distillation token and second head.
    pub fn distilled(self) -> Self {
        Self { distilled: true, ..self }
    }

    /// A 28×28, patch-4 ViT for CPU-scale experiments on Fashion-MNIST (49 tokens + cls).
    pub fn vit_mini() -> Self {
        Self {
            img_size: 28,
            patch_size: 4,
            num_classes: 10,
            embed_dim: 96,
            depth: 4,
            heads: 3,
            ..Self::deit_tiny()
        }
    }

    /// `vit_mini` narrowed to the parameter count of `vit_mini().pe()` (issue 15: does tying beat
    /// shrinking?). Depth, heads, patch and MLP ratio stay; only the width changes, so the model is
    /// the same family scaled down uniformly. With head, an untied ViT of width C at ratio 4 on
    /// 28×28 patch-4 RGB input (50 tokens, 10 classes) has 4·(12C² + 13C) + 112C + 10 = 48C² + 164C + 10
    /// parameters; 236,938 (the PE twin) solves to C = 68.6, and the nearest multiple of the 3 heads
    /// within 2 % is 69 (239,854, +1.23 %; 66 would be −7.2 %).
    pub fn vit_mini_matched() -> Self {
        Self { embed_dim: 69, ..Self::vit_mini() }
    }

    /// DeiT-S narrowed to ViT-PE's (DeiT-S geometry, tied) parameter count, like
    /// [`VitConfig::vit_mini_matched`]: depth 12, 6 heads, ratio 4, patch 16 at 224 stay. With head,
    /// 12·(12C² + 13C) + 1969C + 1000 = 144C² + 2125C + 1000 parameters; 11,433,832 solves to
    /// C = 274.5 and the nearest multiple of 6 within 2 % is 276 (11,556,844, +1.08 %; 270 is −3.2 %).
    pub fn deit_small_matched() -> Self {
        Self { embed_dim: 276, ..Self::deit_small() }
    }

    pub(crate) fn hidden(&self) -> i64 {
        (self.embed_dim as f64 * self.mlp_ratio).round() as i64
    }

    fn grid(&self) -> i64 {
        self.img_size / self.patch_size
    }

    /// Tokens before the patches: the class token, and the distillation token when `distilled`.
    pub fn prefix_tokens(&self) -> i64 {
        1 + i64::from(self.distilled)
    }

    fn tokens(&self) -> i64 {
        self.grid() * self.grid() + self.prefix_tokens()
    }

    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidConfig { arch: "ViT", reason });
        if self.patch_size < 1 || self.img_size % self.patch_size != 0 {
            return invalid(format!(
                "img_size {} must be a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.heads < 1 || self.embed_dim % self.heads != 0 {
            return invalid(format!(
                "embed_dim {} must be divisible by heads {}",
                self.embed_dim, self.heads
            ));
        }
        if self.depth == 0 || self.num_classes < 1 || self.mlp_ratio <= 0.0 {
            return invalid("depth, num_classes and mlp_ratio must be positive".into());
        }
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return invalid(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    /// Builds the model under `path` after validating the config.
    pub fn init(&self, path: nn::Path) -> Result<Vit, Error> {
        self.validate()?;
        let dim = self.embed_dim;
        let patch_embed = torch_default_conv(
            &path / "patch_embed" / "proj",
            self.in_channels,
            dim,
            self.patch_size,
            self.patch_size,
        );
        // timm: cls_token ~ N(0, 1e-6), pos_embed ~ trunc_normal(0.02).
        let cls_token = path.var("cls_token", &[1, 1, dim], nn::Init::Randn { mean: 0.0, stdev: 1e-6 });
        // timm's distilled DeiT: dist_token ~ trunc_normal(0.02), head_dist like the head.
        let distillation = self.distilled.then(|| DistillationToken {
            token: init::trunc_normal(&path, "dist_token", &[1, 1, dim], init::VIT_STD),
            head: init::vit_linear(&path / "head_dist", dim, self.num_classes, true),
        });
        let pos_embed = init::trunc_normal(&path, "pos_embed", &[1, self.tokens(), dim], init::VIT_STD);
        let rates = drop_path::linear_rates(self.drop_path_rate, self.depth);
        let blocks_path = &path / "blocks";
        let blocks = rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| self.init_block(&blocks_path / i, rate))
            .collect::<Result<_, _>>()?;
        let norm = layer_norm(&path / "norm", dim);
        let head = init::vit_linear(&path / "head", dim, self.num_classes, true);
        Ok(Vit { patch_embed, cls_token, distillation, pos_embed, blocks, norm, head, config: self.clone() })
    }

    fn init_block(&self, path: nn::Path, drop_path: f64) -> Result<VitBlock, pe_layers::Error> {
        let attention = AttentionConfig {
            dim: self.embed_dim,
            heads: self.heads,
            qkv_bias: self.qkv_bias,
            attn_drop: self.attn_drop_rate,
            proj_drop: self.drop_rate,
        };
        let mlp = MlpConfig {
            dim: self.embed_dim,
            hidden: self.hidden(),
            activation: Activation::Gelu,
            drop: self.drop_rate,
        };
        Ok(VitBlock {
            norm1: layer_norm(&path / "norm1", self.embed_dim),
            attn: if self.pe_attention {
                AnyAttention::Pe(attention.init_pe(&path / "attn")?)
            } else {
                AnyAttention::Standard(attention.init(&path / "attn")?)
            },
            norm2: layer_norm(&path / "norm2", self.embed_dim),
            mlp: if self.pe_mlp {
                AnyMlp::Pe(mlp.init_pe(&path / "mlp"))
            } else {
                AnyMlp::Standard(mlp.init(&path / "mlp"))
            },
            drop_path: DropPath::new(drop_path)?,
        })
    }

    /// Per-layer multiply-accumulates and parameters at this config's `img_size`.
    pub fn costs(&self) -> CostSheet {
        let (dim, hidden, tokens, grid) = (self.embed_dim, self.hidden(), self.tokens(), self.grid());
        let mut sheet = CostSheet::default();
        sheet.conv_with_bias("patch_embed.proj", self.in_channels, dim, self.patch_size, grid, grid);
        sheet.push(Cost::param("cls_token".into(), dim));
        if self.distilled {
            sheet.push(Cost::param("dist_token".into(), dim));
        }
        sheet.push(Cost::param("pos_embed".into(), tokens * dim));
        for block in 0..self.depth {
            let name = |layer: &str| format!("blocks.{block}.{layer}");
            sheet.norm(&name("norm1"), dim);
            let bias = if self.qkv_bias { 3 * dim } else { 0 };
            if self.pe_attention {
                // W_q, W_kv: 2·C² parameters used for four C×C products per token.
                sheet.push(Cost {
                    name: name("attn.wq,wkv"),
                    params: 2 * dim * dim + bias + dim,
                    macs: 4 * dim * dim * tokens,
                });
            } else {
                sheet.push(Cost {
                    name: name("attn.qkv"),
                    params: 3 * dim * dim + bias,
                    macs: 3 * dim * dim * tokens,
                });
                sheet.linear(&name("attn.proj"), dim, dim, tokens);
            }
            // QKᵀ and attention × V: two N×N×C products over all heads.
            sheet.push(Cost::macs(name("attn.matmuls"), 2 * tokens * tokens * dim));
            sheet.norm(&name("norm2"), dim);
            if self.pe_mlp {
                sheet.push(Cost {
                    name: name("mlp.weight"),
                    params: dim * hidden + hidden + dim,
                    macs: 2 * dim * hidden * tokens,
                });
            } else {
                sheet.linear(&name("mlp.fc1"), dim, hidden, tokens);
                sheet.linear(&name("mlp.fc2"), hidden, dim, tokens);
            }
        }
        sheet.norm("norm", dim);
        sheet.linear("head", dim, self.num_classes, 1);
        sheet.mark_head("head");
        if self.distilled {
            sheet.linear("head_dist", dim, self.num_classes, 1);
            sheet.mark_head("head_dist");
        }
        sheet
    }
}

fn layer_norm(path: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(path, vec![dim], nn::LayerNormConfig { eps: LN_EPS, ..Default::default() })
}

/// A block's attention: standard or tied.
#[derive(Debug)]
pub enum AnyAttention {
    Standard(Attention),
    Pe(PeAttention),
}

/// A block's MLP: standard or tied.
#[derive(Debug)]
pub enum AnyMlp {
    Standard(Mlp),
    Pe(PeMlp),
}

impl AnyAttention {
    fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        match self {
            AnyAttention::Standard(attn) => attn.forward_with_hidden(xs, train),
            AnyAttention::Pe(attn) => attn.forward_with_hidden(xs, train),
        }
    }

    fn forward_leading(&self, xs: &Tensor, queries: i64, train: bool) -> Tensor {
        match self {
            AnyAttention::Standard(attn) => attn.forward_leading(xs, queries, train),
            AnyAttention::Pe(attn) => attn.forward_leading(xs, queries, train),
        }
    }
}

impl AnyMlp {
    fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        match self {
            AnyMlp::Standard(mlp) => mlp.forward_with_hidden(xs, train),
            AnyMlp::Pe(mlp) => mlp.forward_with_hidden(xs, train),
        }
    }
}

/// Pre-norm transformer block: `x + drop_path(attn(norm1 x))`, then `x + drop_path(mlp(norm2 x))`.
#[derive(Debug)]
pub struct VitBlock {
    pub norm1: nn::LayerNorm,
    pub attn: AnyAttention,
    pub norm2: nn::LayerNorm,
    pub mlp: AnyMlp,
    pub drop_path: DropPath,
}

impl VitBlock {
    /// The forward pass, handing `probe` the attended tokens (`"attn"`, read by the output
    /// projection) and the MLP hidden activation (`"mlp"`), for weight-space analysis.
    pub fn forward_probed(&self, xs: &Tensor, train: bool, probe: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        // [B, N, C] -> [B, N, C]
        let (attended, hidden) = self.attn.forward_with_hidden(&xs.apply(&self.norm1), train);
        probe("attn", &hidden);
        let xs = xs + self.drop_path.forward_t(&attended, train);
        let (mixed, hidden) = self.mlp.forward_with_hidden(&xs.apply(&self.norm2), train);
        probe("mlp", &hidden);
        &xs + self.drop_path.forward_t(&mixed, train)
    }

    /// The block's output for the `prefix` leading tokens alone, [B, N, C] -> [B, prefix, C]: what
    /// the last block computes when only the class (and distillation) token reach a head. Every
    /// token still serves as a key and value, but the queries, the output projection and the MLP
    /// run for `prefix` tokens instead of N, which saves most of a block's work (exact: the other
    /// tokens' outputs are never read).
    pub fn forward_prefix(&self, xs: &Tensor, prefix: i64, train: bool) -> Tensor {
        let attended = self.attn.forward_leading(&xs.apply(&self.norm1), prefix, train);
        let lead = xs.narrow(1, 0, prefix) + self.drop_path.forward_t(&attended, train);
        let (mixed, _) = self.mlp.forward_with_hidden(&lead.apply(&self.norm2), train);
        &lead + self.drop_path.forward_t(&mixed, train)
    }
}

impl nn::ModuleT for VitBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_probed(xs, train, &mut |_, _| {})
    }
}

/// DeiT's distillation token and the head that reads it (timm's `dist_token`, `head_dist`).
#[derive(Debug)]
pub struct DistillationToken {
    pub token: Tensor,
    pub head: nn::Linear,
}

/// The logits of each head: the class token's, and the distillation token's when there is one.
#[derive(Debug)]
pub struct Heads {
    pub class: Tensor,
    pub dist: Option<Tensor>,
}

impl Heads {
    /// The model's prediction: the class head, or both heads' mean (DeiT's and timm's inference).
    pub fn merged(self) -> Tensor {
        match self.dist {
            Some(dist) => (self.class + dist) / 2.0,
            None => self.class,
        }
    }
}

#[derive(Debug)]
pub struct Vit {
    pub patch_embed: nn::Conv2D,
    pub cls_token: Tensor,
    pub distillation: Option<DistillationToken>,
    pub pos_embed: Tensor,
    pub blocks: Vec<VitBlock>,
    pub norm: nn::LayerNorm,
    pub head: nn::Linear,
    pub config: VitConfig,
}

impl Vit {
    /// The normalised cls token: [B, C_in, H, W] -> [B, embed_dim].
    pub fn features(&self, xs: &Tensor, train: bool) -> Tensor {
        self.prefix_features(xs, train).select(1, 0)
    }

    /// The normalised prefix tokens (class, then distillation): [B, C_in, H, W] -> [B, P, C]. Only
    /// they reach a head, so the last block computes its output for them alone
    /// ([`VitBlock::forward_prefix`]).
    pub fn prefix_features(&self, xs: &Tensor, train: bool) -> Tensor {
        let (last, blocks) = self.blocks.split_last().expect("validate() requires depth >= 1");
        let tokens = blocks.iter().fold(self.embed(xs, train), |xs, block| block.forward_t(&xs, train));
        last.forward_prefix(&tokens, self.config.prefix_tokens(), train).apply(&self.norm)
    }

    /// [`Vit::features`] with every block computed for all tokens, handing `probe` each block's
    /// hidden activations named `blocks.{i}.attn` and `blocks.{i}.mlp` (see
    /// [`VitBlock::forward_probed`]).
    pub fn features_probed(&self, xs: &Tensor, train: bool, probe: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        self.prefix_features_probed(xs, train, probe).select(1, 0)
    }

    /// [`Vit::prefix_features`] with every block computed for all tokens (see [`Vit::features_probed`]).
    pub fn prefix_features_probed(
        &self,
        xs: &Tensor,
        train: bool,
        probe: &mut dyn FnMut(&str, &Tensor),
    ) -> Tensor {
        let tokens = self.blocks.iter().enumerate().fold(self.embed(xs, train), |xs, (i, block)| {
            block.forward_probed(&xs, train, &mut |name, hidden| probe(&format!("blocks.{i}.{name}"), hidden))
        });
        tokens.narrow(1, 0, self.config.prefix_tokens()).apply(&self.norm)
    }

    /// Each head's logits: [B, C_in, H, W] -> [B, num_classes] per head.
    pub fn forward_heads(&self, xs: &Tensor, train: bool) -> Heads {
        self.heads_of(&self.prefix_features(xs, train))
    }

    /// The heads applied to normalised prefix tokens [B, P, C].
    pub fn heads_of(&self, prefix: &Tensor) -> Heads {
        let class = prefix.select(1, 0).apply(&self.head);
        let dist = self.distillation.as_ref().map(|d| prefix.select(1, 1).apply(&d.head));
        Heads { class, dist }
    }

    /// Patch embedding, prefix tokens and position embedding: [B, C_in, H, W] -> [B, N, C]
    fn embed(&self, xs: &Tensor, train: bool) -> Tensor {
        // [B, C_in, H, W] -> [B, C, H/p, W/p] -> [B, N, C]
        let patches = xs.apply(&self.patch_embed).flatten(2, -1).transpose(1, 2);
        // Expanded to the patches' batch (not to a number), so a traced model takes any batch.
        let one = patches.narrow(1, 0, 1);
        let mut tokens = vec![self.cls_token.expand_as(&one).to_kind(patches.kind())];
        if let Some(distillation) = &self.distillation {
            tokens.push(distillation.token.expand_as(&one).to_kind(patches.kind()));
        }
        tokens.push(patches);
        (Tensor::cat(&tokens, 1) + &self.pos_embed).dropout(self.config.drop_rate, train)
    }
}

impl nn::ModuleT for Vit {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // [B, C_in, H, W] -> [B, num_classes]
        self.forward_heads(xs, train).merged()
    }
}
