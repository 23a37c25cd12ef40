//! Turning a host `pe_data::Batch` (uint8 NCHW) into normalised, optionally mixed, device tensors.

use pe_data::mixup::{partner, MixKind};
use pe_data::{Batch, DataConfig, MixPlan, Mixup};
use tch::{Device, Kind, Tensor};

use crate::train::step_engine::Targets;

/// What the model trains on, made from each host batch on the device: normalised images and,
/// when the recipe mixes, the Mixup/CutMix images with soft targets (else the labels). Each batch's
/// mix is a function of (seed, epoch, batch, rank), so a resumed run mixes as the first one did.
pub struct TrainInputs {
    normalizer: Normalizer,
    mixup: Option<Mixup>,
    seed: u64,
    rank: u64,
    device: Device,
}

impl TrainInputs {
    pub fn new(data: &DataConfig, classes: usize, seed: u64, rank: usize, device: Device) -> Self {
        Self {
            normalizer: Normalizer::new(data.mean, data.std, device),
            mixup: Mixup::from_config(data, classes),
            seed,
            rank: rank as u64,
            device,
        }
    }

    /// The normaliser (evaluation uses it unmixed).
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Float images [B, 3, H, W] and their targets, on the device.
    pub fn prepare(&self, batch: &Batch) -> (Tensor, Targets) {
        let (images, labels) = to_device(batch, self.device);
        let images = self.normalizer.apply(&images);
        match &self.mixup {
            Some(mixup) => {
                let plan = mixup.plan_for(self.seed, batch.epoch, batch.index, self.rank, batch.h, batch.w);
                let targets = soft_targets(mixup, &batch.labels, &plan, self.device);
                (mix(&images, &plan), Targets::Soft(targets))
            }
            None => (images, Targets::Labels(labels)),
        }
    }
}

/// Per-channel normalisation applied on the device, so the host→device copy stays uint8.
pub struct Normalizer {
    mean: Tensor,
    std: Tensor,
}

impl Normalizer {
    pub fn new(mean: [f64; 3], std: [f64; 3], device: Device) -> Self {
        let channel =
            |v: [f64; 3]| Tensor::from_slice(&v.map(|x| (x * 255.0) as f32)).view([1, 3, 1, 1]).to(device);
        Self { mean: channel(mean), std: channel(std) }
    }

    /// uint8 [B, 3, H, W] -> float32 [B, 3, H, W], `(x - 255·mean) / (255·std)`.
    pub fn apply(&self, images: &Tensor) -> Tensor {
        (images.to_kind(Kind::Float) - &self.mean) / &self.std
    }
}

/// The batch's uint8 images and i64 labels on `device` (non-blocking from pinned memory on CUDA).
pub fn to_device(batch: &Batch, device: Device) -> (Tensor, Tensor) {
    let shape = [batch.n as i64, 3, batch.h as i64, batch.w as i64];
    let mut images = Tensor::from_slice(&batch.images).view(shape);
    let mut labels = Tensor::from_slice(&batch.labels);
    if device.is_cuda() {
        images = images.pin_memory(device).to_device_(device, Kind::Uint8, true, false);
        labels = labels.pin_memory(device).to_device_(device, Kind::Int64, true, false);
    }
    (images, labels)
}

/// Applies a Mixup/CutMix plan to normalised float images [N, C, H, W], each sample mixed with
/// its [`partner`] (timm's `Mixup` in `mode='batch'`).
pub fn mix(images: &Tensor, plan: &MixPlan) -> Tensor {
    let n = images.size()[0] as usize;
    let order: Vec<i64> = (0..n).map(|i| partner(i, n) as i64).collect();
    let partners = || images.index_select(0, &Tensor::from_slice(&order).to(images.device()));
    match plan.kind {
        MixKind::None => images.shallow_clone(),
        MixKind::Mixup => images * plan.lambda + partners() * (1.0 - plan.lambda),
        MixKind::CutMix { top, left, height, width } => {
            let mixed = images.copy();
            let window =
                |t: &Tensor| t.narrow(2, top as i64, height as i64).narrow(3, left as i64, width as i64);
            window(&mixed).copy_(&window(&partners()));
            mixed
        }
    }
}

/// Soft targets [B, K] for a (possibly mixed) batch, on `device`.
pub fn soft_targets(mixup: &Mixup, labels: &[i64], plan: &MixPlan, device: Device) -> Tensor {
    let targets = mixup.soft_targets(labels, plan);
    Tensor::from_slice(&targets).view([labels.len() as i64, mixup.num_classes as i64]).to(device)
}
