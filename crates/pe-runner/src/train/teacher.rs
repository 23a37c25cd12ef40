//! The frozen teacher of `[distill]`: what `distill.teacher` names (anything `model.init` takes),
//! built with its own model at its own input size, in eval mode, outside the trained variables
//! (no optimizer, no checkpoint, no gradient sync), its weights' digest part of the run identity.

use anyhow::{bail, Context, Result};
use tch::nn::ModuleT;
use tch::{Device, Tensor};

use pe_models::{Model, ModelConfig};

use crate::config::DistillConfig;
use crate::train::amp::Precision;
use crate::train::checkpoint;
use crate::train::init_weights::InitIdentity;
use crate::train::trained::{Loaded, Trained};

pub struct Teacher {
    loaded: Loaded,
    /// The side the batch is resized to first, when it differs from the student's.
    resize_to: Option<i64>,
    identity: InitIdentity,
}

impl Teacher {
    /// Reads and builds the teacher of `config` for a `student` trained on `img_size` images, on
    /// `device` in the run's `precision` (its conv weights channels_last when the run's are).
    pub fn open(
        config: &DistillConfig,
        student: &ModelConfig,
        img_size: i64,
        precision: &Precision,
        device: Device,
    ) -> Result<Self> {
        let context = || format!("distill.teacher = {}", config.teacher.display());
        let trained = Trained::resolve(&config.teacher, config.teacher_ema, config.teacher_model.as_deref(), &[])
            .with_context(context)?;
        let teacher_size = match (config.teacher_img_size, &trained.model) {
            (0, ModelConfig::Vit(vit)) => vit.img_size,
            (0, ModelConfig::Resnet(_)) => img_size,
            (size, _) => size as i64,
        };
        let loaded = trained.load(teacher_size, device).with_context(context)?;
        if loaded.config.num_classes() != student.num_classes() {
            bail!(
                "{}: the teacher has {} classes, the student {}",
                context(),
                loaded.config.num_classes(),
                student.num_classes()
            );
        }
        if precision.channels_last {
            pe_torch::memory_format::convert_conv_weights_(&loaded.vs)?;
        }
        let digest = checkpoint::content_hash(&trained.weights).with_context(context)?;
        let identity = InitIdentity { file: trained.weights.display().to_string(), digest };
        Ok(Self { loaded, resize_to: (teacher_size != img_size).then_some(teacher_size), identity })
    }

    /// What the run identity records of the teacher's weights.
    pub fn identity(&self) -> &InitIdentity {
        &self.identity
    }

    pub fn model(&self) -> &Model {
        &self.loaded.model
    }

    /// What was adapted to the teacher's input size, one line each.
    pub fn adapted(&self) -> &[String] {
        &self.loaded.adapted
    }

    /// The teacher's logits [B, K] on the batch the student sees (already in the run's memory
    /// format), without an autograd graph, under the run's autocast.
    pub fn logits(&self, images: &Tensor, precision: &Precision, device: Device) -> Result<Tensor> {
        tch::no_grad(|| {
            let images = match self.resize_to {
                Some(side) => images.internal_upsample_bilinear2d_aa([side, side], false, None, None),
                None => images.shallow_clone(),
            };
            let _autocast = precision.autocast(device)?;
            Ok(self.loaded.model.forward_t(&images, false))
        })
    }
}
