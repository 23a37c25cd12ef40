//! The frozen teacher of `[distill]`: what `distill.teacher` names (anything `model.init` takes),
//! built with its own model at its own input size, in eval mode, outside the trained variables
//! (no optimizer, no checkpoint, no gradient sync), its weights' digest part of the run identity.

use std::path::PathBuf;

use anyhow::Result;
use tch::nn::ModuleT;
use tch::{Device, Tensor};

use pe_models::ModelConfig;

use crate::config::{DistillConfig, DistillKind};
use crate::train::amp::Precision;
use crate::train::checkpoint;
use crate::train::init_weights::InitIdentity;
use crate::train::trained::{Loaded, Trained};

/// Why `distill.teacher` cannot teach this run (exit code 2: nothing was started).
#[derive(Debug, thiserror::Error)]
#[error("distill.teacher = {}: {reason}", path.display())]
pub struct TeacherError {
    pub path: PathBuf,
    pub reason: String,
}

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
    ) -> Result<Self, TeacherError> {
        let refuse = |reason: String| TeacherError { path: config.teacher.clone(), reason };
        let file = &config.teacher;
        let has_run = file.parent().is_some_and(|dir| dir.join(checkpoint::STATE).is_file());
        if config.teacher_model.is_none() && file.is_file() && !has_run {
            return Err(refuse(
                "a weights file without its run: name its registry model with distill.teacher_model".into(),
            ));
        }
        let trained = Trained::resolve(file, config.teacher_ema, config.teacher_model.as_deref(), &[])
            .map_err(|e| refuse(format!("{e:#}")))?;
        let teacher_size = match (config.teacher_img_size, &trained.model) {
            (0, ModelConfig::Vit(vit)) => vit.img_size,
            (0, ModelConfig::Resnet(_)) => img_size,
            (size, _) => size as i64,
        };
        let loaded = trained.load(teacher_size, device).map_err(|e| refuse(format!("{e:#}")))?;
        if loaded.config.num_classes() != student.num_classes() {
            return Err(refuse(format!(
                "the teacher has {} classes, the student {}",
                loaded.config.num_classes(),
                student.num_classes()
            )));
        }
        if precision.channels_last {
            pe_torch::memory_format::convert_conv_weights_(&loaded.vs)
                .map_err(|e| refuse(format!("{e:#}")))?;
        }
        let digest = checkpoint::content_hash(&trained.weights).map_err(|e| refuse(format!("{e:#}")))?;
        let identity = InitIdentity { file: trained.weights.display().to_string(), digest };
        Ok(Self { loaded, resize_to: (teacher_size != img_size).then_some(teacher_size), identity })
    }

    /// What the run identity records of the teacher's weights.
    pub fn identity(&self) -> &InitIdentity {
        &self.identity
    }

    /// What the run log says of the teacher: where it was read, how it enters the loss, and what
    /// was adapted to its input size.
    pub fn summary(&self, config: &DistillConfig) -> String {
        let kind = match config.kind {
            DistillKind::Soft => format!("soft, tau {}", config.tau),
            DistillKind::Hard => "hard".to_owned(),
        };
        let mut text = format!(
            "distill: teacher {} ({kind}, alpha {}{})",
            self.identity.file,
            config.alpha,
            self.resize_to.map(|side| format!(", images resized to {side}×{side}")).unwrap_or_default()
        );
        for line in &self.loaded.adapted {
            text += &format!("\n  teacher: {line}");
        }
        text
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
