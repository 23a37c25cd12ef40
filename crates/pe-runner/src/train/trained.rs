//! A trained model that commands and runs read (`pe eval`, `pe predict`, `pe export`, a
//! distillation teacher): a run folder (its best checkpoint, else last), a checkpoint folder or a
//! safetensors file, with what its run recorded, and the model built at an input size with those
//! weights in it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tch::{nn, Device};

use pe_models::pretrained::{self, Selection};
use pe_models::{Model, ModelConfig};

use crate::config::{resolved_with_overrides, ExperimentConfig};
use crate::train::checkpoint;
use crate::train::init_weights::{weights_file, InitError};
use crate::train::run_identity::Identity;

/// A trained model ready to run.
pub struct Loaded {
    /// Holds the weights (frozen).
    pub vs: nn::VarStore,
    pub model: Model,
    /// The model's config at the input size it was built for.
    pub config: ModelConfig,
    /// What was adapted to that size, one line each (for the user to read).
    pub adapted: Vec<String>,
}

/// Where the weights come from, and what their run recorded.
pub struct Trained {
    pub weights: PathBuf,
    pub model: ModelConfig,
    /// The run's recipe with the command's `--set` overrides, when the weights are a run's
    /// checkpoint.
    pub recipe: Option<ExperimentConfig>,
    /// The class list the run trained with.
    pub classes: Option<Vec<String>>,
}

impl Trained {
    /// `source` (a run folder, checkpoint folder or weights file), its EMA weights with `ema`;
    /// `model` names the registry model of a bare file.
    pub fn resolve(source: &Path, ema: bool, model: Option<&str>, overrides: &[String]) -> Result<Self> {
        let weights = weights_file(source, ema).map_err(|error| match error {
            InitError::Source { path, reason } => anyhow::anyhow!("{}: {reason}", path.display()),
            other => other.into(),
        })?;
        let identity = match weights.parent() {
            Some(dir) if dir.join(checkpoint::STATE).is_file() => Identity::read(dir)?,
            _ => None,
        };
        let (recipe, classes) = match identity {
            Some(identity) => {
                (Some(resolved_with_overrides(&identity.config, overrides)?), Some(identity.dataset.classes))
            }
            None => (None, None),
        };
        let model = match (model, &recipe) {
            (Some(name), _) => pe_models::preset(name).map_err(anyhow::Error::msg)?,
            (None, Some(config)) => config.model.clone(),
            (None, None) => {
                bail!(
                    "{}: no run identity beside these weights: name the model with --model",
                    weights.display()
                )
            }
        };
        Ok(Trained { weights, model, recipe, classes })
    }

    /// The weights `checkpoint` (a checkpoint folder or a file) under the recipe `recipe` (its
    /// model), with the class list the checkpoint recorded, if any.
    pub fn with_recipe(recipe: ExperimentConfig, checkpoint: &Path, ema: bool) -> Result<Self> {
        let weights = weights_file(checkpoint, ema).map_err(|error| match error {
            InitError::Source { path, reason } => anyhow::anyhow!("{}: {reason}", path.display()),
            other => other.into(),
        })?;
        let classes = match weights.parent() {
            Some(dir) if dir.join(checkpoint::STATE).is_file() => {
                Identity::read(dir)?.map(|identity| identity.dataset.classes)
            }
            _ => None,
        };
        Ok(Trained { weights, model: recipe.model.clone(), recipe: Some(recipe), classes })
    }

    /// The model for inputs of side `img_size` with these weights, frozen, on `device`, and what
    /// was adapted (a resampled position embedding). Weights of another class count are an
    /// error: evaluating a fresh head would measure nothing.
    pub fn load(&self, img_size: i64, device: Device) -> Result<Loaded> {
        let config = at_img_size(&self.model, img_size);
        let mut vs = nn::VarStore::new(device);
        let model = config.init(vs.root())?;
        let stored = pretrained::read(&self.weights)?;
        let selection = Selection { exclude: &[], head_init_scale: 1.0 };
        let adapted = pretrained::load(&config, &vs, &self.weights, stored, &selection)?;
        if let Some(classes) = adapted.head_reinitialised_from {
            bail!(
                "{}: the weights have {classes} classes, the model {}: name the right --model",
                self.weights.display(),
                config.num_classes()
            );
        }
        vs.freeze();
        let adapted = adapted.lines(&config);
        Ok(Loaded { vs, model, config, adapted })
    }
}

/// `config` for inputs of side `img_size` (a ViT's patch grid follows it; a ResNet takes any).
pub fn at_img_size(config: &ModelConfig, img_size: i64) -> ModelConfig {
    match config {
        ModelConfig::Vit(vit) => ModelConfig::Vit(pe_models::VitConfig { img_size, ..vit.clone() }),
        resnet => resnet.clone(),
    }
}
