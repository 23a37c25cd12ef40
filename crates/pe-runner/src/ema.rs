//! Model EMA: a second copy of the weights tracking `ema = decay·ema + (1 − decay)·model`.

use tch::{nn, Tensor};

use pe_models::{Model, ModelConfig};

/// The averaged model, evaluated separately from the trained one (timm's `ModelEmaV2`).
pub struct Ema {
    pub vs: nn::VarStore,
    pub model: Model,
    pub decay: f64,
    /// (EMA variable, trained variable) by name, paired once so each step only does arithmetic.
    pairs: Vec<(Tensor, Tensor)>,
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
        let pairs =
            vs.variables().into_iter().map(|(name, ema)| (ema, sources[&name].shallow_clone())).collect();
        Ok(Self { vs, model, decay, pairs })
    }

    /// One EMA step over every variable: parameters are averaged, BN statistics too (as timm).
    pub fn update(&mut self) {
        tch::no_grad(|| {
            for (ema, current) in &self.pairs {
                let mut ema = ema.shallow_clone();
                if ema.is_floating_point() {
                    ema *= self.decay;
                    ema += current * (1.0 - self.decay);
                } else {
                    ema.copy_(current);
                }
            }
        });
    }
}
