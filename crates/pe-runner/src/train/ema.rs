//! Model EMA: a second copy of the weights tracking `ema = decay·ema + (1 − decay)·model`.

use tch::{nn, Tensor};

use pe_models::{Model, ModelConfig};

/// The averaged model, evaluated separately from the trained one (timm's `ModelEmaV3`).
pub struct Ema {
    pub vs: nn::VarStore,
    pub model: Model,
    pub decay: f64,
    /// Float EMA variables, and the trained ones they follow in the same order: paired once, so
    /// each step is one multi-tensor lerp.
    averaged: Vec<Tensor>,
    followed: Vec<Tensor>,
    /// Integer variables (BN's batch counters): copied, not averaged.
    copied: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// Builds a copy of `source`'s model on the same device and copies its current weights; with
    /// `channels_last` its conv weights take that layout too, so evaluating it is as fast as the
    /// trained model.
    pub fn new(
        config: &ModelConfig,
        source: &nn::VarStore,
        decay: f64,
        channels_last: bool,
    ) -> anyhow::Result<Self> {
        let mut vs = nn::VarStore::new(source.device());
        let model = config.init(vs.root())?;
        if channels_last {
            pe_torch::memory_format::convert_conv_weights_(&vs)?;
        }
        vs.copy(source)?;
        vs.freeze();
        let sources = source.variables();
        let (mut averaged, mut followed, mut copied) = (Vec::new(), Vec::new(), Vec::new());
        for (name, ema) in vs.variables() {
            let current = sources[&name].shallow_clone();
            if ema.is_floating_point() {
                averaged.push(ema);
                followed.push(current);
            } else {
                copied.push((ema, current));
            }
        }
        Ok(Self { vs, model, decay, averaged, followed, copied })
    }

    /// One EMA step over every variable, `ema += (1 − decay)·(model − ema)`: parameters and BN
    /// statistics are averaged (as timm), counters copied.
    pub fn update(&mut self) -> pe_torch::Result<()> {
        let ema: Vec<&Tensor> = self.averaged.iter().collect();
        let current: Vec<&Tensor> = self.followed.iter().collect();
        pe_torch::foreach::lerp_(&ema, &current, 1.0 - self.decay)?;
        tch::no_grad(|| {
            for (ema, current) in &self.copied {
                ema.shallow_clone().copy_(current);
            }
        });
        Ok(())
    }

    /// [`Ema::update`], skipped on the device when `skip` (a 0-dim float flag, fp16's found-inf) is
    /// non-zero, as the eager step skips it on the host: the averaging weight becomes 0 and the
    /// counters keep their values. Reads nothing back, so a CUDA graph can capture it.
    pub fn update_unless(&mut self, skip: &Tensor) -> pe_torch::Result<()> {
        let keep = skip.f_eq(0.0)?;
        let weight = keep.f_to_kind(tch::Kind::Float)?.f_mul_scalar(1.0 - self.decay)?;
        let ema: Vec<&Tensor> = self.averaged.iter().collect();
        let current: Vec<&Tensor> = self.followed.iter().collect();
        pe_torch::foreach::lerp_tensor_(&ema, &current, &weight)?;
        tch::no_grad(|| -> pe_torch::Result<()> {
            for (ema, current) in &self.copied {
                let kept = current.f_where_self(&keep, ema)?;
                ema.shallow_clone().f_copy_(&kept)?;
            }
            Ok(())
        })
    }
}
