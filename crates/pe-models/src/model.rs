//! One type for "any model of the registry", so the runner needs no per-architecture code.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT as _};
use tch::Tensor;

use crate::accounting::CostSheet;
use crate::error::Error;
use crate::resnet::{ResNet, ResNetConfig};
use crate::vit::{Heads, Vit, VitConfig};

/// A model's full definition, as written in a TOML `[model]` section (`arch = "resnet" | "vit"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelConfig {
    Resnet(ResNetConfig),
    Vit(VitConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            ModelConfig::Resnet(config) => config.validate(),
            ModelConfig::Vit(config) => config.validate(),
        }
    }

    /// Builds the model under `path`, or says why the config cannot be built.
    pub fn init(&self, path: nn::Path) -> Result<Model, Error> {
        Ok(match self {
            ModelConfig::Resnet(config) => Model::Resnet(config.init(path)?),
            ModelConfig::Vit(config) => Model::Vit(config.init(path)?),
        })
    }

    pub fn num_classes(&self) -> i64 {
        match self {
            ModelConfig::Resnet(config) => config.num_classes,
            ModelConfig::Vit(config) => config.num_classes,
        }
    }

    /// Where the classifier's `weight` and `bias` live (torchvision's `fc`, timm's `head`).
    pub fn head_prefix(&self) -> &'static str {
        match self {
            ModelConfig::Resnet(_) => "fc",
            ModelConfig::Vit(_) => "head",
        }
    }

    /// Every classifier: the head, and a distilled ViT's `head_dist` beside it.
    pub fn head_prefixes(&self) -> Vec<&'static str> {
        match self {
            ModelConfig::Vit(config) if config.distilled => vec!["head", "head_dist"],
            other => vec![other.head_prefix()],
        }
    }

    pub fn in_channels(&self) -> i64 {
        match self {
            ModelConfig::Resnet(config) => config.in_channels,
            ModelConfig::Vit(config) => config.in_channels,
        }
    }

    /// The input side the model expects: fixed for ViTs (position embeddings); for ResNets, which
    /// accept any size, 224 with the ImageNet stem and 28 (Fashion-MNIST) with the small one.
    pub fn default_img_size(&self) -> i64 {
        match self {
            ModelConfig::Resnet(config) if config.stem == crate::resnet::Stem::Small => 28,
            ModelConfig::Resnet(_) => 224,
            ModelConfig::Vit(config) => config.img_size,
        }
    }

    /// Per-layer parameters and MACs at a square `img_size` input.
    pub fn costs(&self, img_size: i64) -> CostSheet {
        match self {
            ModelConfig::Resnet(config) => config.costs(img_size, img_size),
            ModelConfig::Vit(config) => VitConfig { img_size, ..config.clone() }.costs(),
        }
    }

    /// Name of the classifier layer (its parameters are the "head" in counts).
    pub fn head_name(&self) -> &'static str {
        match self {
            ModelConfig::Resnet(_) => "fc",
            ModelConfig::Vit(_) => "head",
        }
    }
}

/// A built model. Its fields stay public so users can reach any layer (`stages[2].shared_w`).
#[derive(Debug)]
pub enum Model {
    Resnet(ResNet),
    Vit(Vit),
}

impl Model {
    /// Logits in eval mode, handing `probe` every hidden activation a tied or tieable pair of
    /// matrices reads (`blocks.{i}.attn`, `blocks.{i}.mlp`, `layer{s}.{b}`), for weight-space analysis.
    pub fn forward_probed(&self, xs: &Tensor, probe: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        match self {
            Model::Resnet(model) => model.features_probed(xs, false, probe).apply(&model.fc),
            Model::Vit(model) => model.heads_of(&model.prefix_features_probed(xs, false, probe)).merged(),
        }
    }

    /// Each head's logits (a distilled ViT has two; see [`Heads`]); `forward_t` is their mean.
    pub fn forward_heads(&self, xs: &Tensor, train: bool) -> Heads {
        match self {
            Model::Resnet(model) => Heads { class: model.forward_t(xs, train), dist: None },
            Model::Vit(model) => model.forward_heads(xs, train),
        }
    }

    /// Whether the model has DeiT's distillation head.
    pub fn is_distilled(&self) -> bool {
        matches!(self, Model::Vit(vit) if vit.distillation.is_some())
    }
}

impl nn::ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Model::Resnet(model) => model.forward_t(xs, train),
            Model::Vit(model) => model.forward_t(xs, train),
        }
    }
}
