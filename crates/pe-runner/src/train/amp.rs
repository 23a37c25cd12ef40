//! Numeric precision of a run: autocast dtype and memory format, from `train.amp` /
//! `train.channels_last`.

use tch::{Device, Kind, Tensor};

use crate::config::Amp;

pub struct Precision {
    pub amp: Amp,
    pub channels_last: bool,
}

impl Precision {
    /// The autocast dtype, if any.
    pub fn kind(&self) -> Option<Kind> {
        match self.amp {
            Amp::Off => None,
            Amp::Bf16 => Some(Kind::BFloat16),
            Amp::Fp16 => Some(Kind::Half),
        }
    }

    /// An autocast region for a forward pass; `None` when AMP is off. Dropping it ends the region.
    pub fn autocast(&self, device: Device) -> anyhow::Result<Option<pe_torch::autocast::AutocastGuard>> {
        self.kind()
            .map(|kind| pe_torch::autocast::autocast(device, kind))
            .transpose()
            .map_err(anyhow::Error::from)
    }

    /// The model input in the run's memory format.
    pub fn input(&self, images: Tensor) -> anyhow::Result<Tensor> {
        if self.channels_last {
            Ok(pe_torch::memory_format::to_channels_last(&images)?)
        } else {
            Ok(images)
        }
    }
}
