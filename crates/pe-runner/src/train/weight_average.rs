//! Averages of several checkpoints' weights (`pe average`), and BatchNorm statistics recomputed
//! for an average.
//!
//! An average of weights lies between the points its ingredients reached; the average of their
//! BatchNorm running statistics describes none of them exactly, which is why they can instead be
//! measured again on training batches (what `torch.optim.swa_utils.update_bn` does for SWA).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use pe_data::{Loader, Split};
use pe_models::weights;

use crate::config::ExperimentConfig;
use crate::train::amp::Precision;
use crate::train::batch::{to_device, Normalizer};

/// One checkpoint's variables in float64 on the CPU: sums of them do not depend on the order
/// the ingredients come in.
pub struct Ingredient(BTreeMap<String, Tensor>);

impl Ingredient {
    /// Loads `file` strictly into `vs` (the model it must fit: a missing, unexpected or
    /// mis-shaped tensor is an error naming them) and keeps a copy of every variable.
    pub fn load(vs: &nn::VarStore, file: &Path) -> Result<Self> {
        weights::load(vs, file)?;
        let tensors = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.to_device(Device::Cpu).to_kind(Kind::Double)))
            .collect();
        Ok(Self(tensors))
    }
}

/// Sets every variable of `vs` to the uniform mean of `ingredients` (cast to the variable's kind).
pub fn set_mean(vs: &nn::VarStore, ingredients: &[&Ingredient]) {
    assert!(!ingredients.is_empty(), "a mean of no checkpoints");
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let sum = ingredients
                .iter()
                .map(|i| &i.0[&name])
                .fold(None::<Tensor>, |acc, t| Some(acc.map_or_else(|| t.copy(), |acc| acc + t)));
            let mean = sum.expect("at least one ingredient") / ingredients.len() as f64;
            var.copy_(&mean.to_kind(var.kind()).to_device(var.device()));
        }
    });
}

/// Replaces the running statistics of every BatchNorm of `vs` by their mean over `inputs` (model
/// inputs, ready to forward): each batch's own mean and unbiased variance, weighted equally, as
/// `update_bn` (momentum `None`) computes them, the model in train mode without gradients.
/// Returns the batches used; a model without BatchNorm takes none.
pub fn recompute_bn(
    model: &impl ModuleT,
    vs: &nn::VarStore,
    inputs: impl Iterator<Item = Result<Tensor>>,
) -> Result<usize> {
    let stats: Vec<Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".running_mean") || name.ends_with(".running_var"))
        .map(|(_, t)| t)
        .collect();
    if stats.is_empty() {
        return Ok(0);
    }
    let mut sums: Vec<Tensor> = stats.iter().map(|t| t.zeros_like().to_kind(Kind::Double)).collect();
    let mut used = 0;
    tch::no_grad(|| -> Result<()> {
        for input in inputs {
            let input = input?;
            for stat in &stats {
                let _ = stat.shallow_clone().zero_();
            }
            let _ = model.forward_t(&input, true);
            // From zero, one train-mode batch leaves MOMENTUM × its own statistics.
            for (sum, stat) in sums.iter_mut().zip(&stats) {
                *sum += stat.to_kind(Kind::Double) / pe_layers::batch_norm::MOMENTUM;
            }
            used += 1;
        }
        Ok(())
    })?;
    anyhow::ensure!(used > 0, "no readable training batch to recompute BatchNorm statistics on");
    tch::no_grad(|| {
        for (stat, sum) in stats.iter().zip(sums) {
            stat.shallow_clone().copy_(&(sum / used as f64).to_kind(stat.kind()));
        }
    });
    Ok(used)
}

/// The first `batches` training batches of a recipe (its training transform, seed and batch
/// size), ready to forward: what BatchNorm statistics are measured again on.
pub struct TrainingBatches {
    loader: Loader,
    batches: usize,
    normalizer: Normalizer,
    precision: Precision,
}

impl TrainingBatches {
    pub fn open(config: &ExperimentConfig, batches: usize, device: Device) -> Result<Self> {
        let split = Split::Train { batch_size: config.train.batch_size, seed: config.train.seed };
        let loader =
            Loader::open_with_cache(&config.data, split, 0, 1, &config.scan_cache()).with_context(|| {
                format!(
                    "opening the training split of {:?} to recompute BatchNorm statistics",
                    config.data.root
                )
            })?;
        let normalizer = Normalizer::new(config.data.mean, config.data.std, device);
        let precision = Precision { amp: config.train.amp, channels_last: false };
        Ok(Self { loader, batches, normalizer, precision })
    }

    pub fn batches(&self) -> usize {
        self.batches
    }

    /// [`recompute_bn`] of `model` (whose variables `vs` holds) on these batches; returns the
    /// batches used.
    pub fn recompute_bn(&self, model: &impl ModuleT, vs: &nn::VarStore) -> Result<usize> {
        let device = vs.device();
        let inputs = self
            .loader
            .epoch(0)
            .filter_map(|batch| match batch {
                Ok(batch) if batch.n == 0 => {
                    self.loader.recycle(batch.images);
                    None
                }
                Ok(batch) => {
                    let (images, _) = to_device(&batch, device);
                    self.loader.recycle(batch.images);
                    Some(self.precision.input(self.normalizer.apply(&images)))
                }
                Err(error) => Some(Err(error.into())),
            })
            .take(self.batches);
        let _autocast = self.precision.autocast(device)?;
        recompute_bn(model, vs, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_three_checkpoints_is_elementwise() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let dir = tempfile::tempdir().unwrap();
        let mut ingredients = Vec::new();
        let mut expected = Tensor::zeros([2, 3], (Kind::Double, Device::Cpu));
        for k in 0..3 {
            tch::no_grad(|| {
                layer.ws.shallow_clone().copy_(&Tensor::randn([2, 3], (Kind::Float, Device::Cpu)));
            });
            expected += layer.ws.to_kind(Kind::Double) / 3.0;
            let file = dir.path().join(format!("{k}.safetensors"));
            weights::save(&vs, &file).unwrap();
            ingredients.push(Ingredient::load(&vs, &file).unwrap());
        }
        set_mean(&vs, &ingredients.iter().collect::<Vec<_>>());
        let error = (layer.ws.to_kind(Kind::Double) - expected).abs().max().double_value(&[]);
        assert!(error < 1e-7, "{error}");
    }

    #[test]
    fn recomputed_statistics_are_the_batches_mean_and_unbiased_variance_averaged() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = pe_layers::batch_norm::batch_norm(vs.root() / "bn", 2, false);
        let model = nn::func_t(move |xs, train| xs.apply_t(&bn, train));
        let batches: Vec<Tensor> = (0..3)
            .map(|k| Tensor::randn([4, 2, 3, 3], (Kind::Float, Device::Cpu)) * (k + 1) as f64 + k as f64)
            .collect();
        let used = recompute_bn(&model, &vs, batches.iter().map(|b| Ok(b.copy()))).unwrap();
        assert_eq!(used, 3);
        // Each batch's statistics per channel, by hand: 36 values a channel, variance over n - 1.
        let per_channel = |b: &Tensor| b.transpose(0, 1).reshape([2, -1]).to_kind(Kind::Double);
        let mean: Tensor =
            batches.iter().map(|b| per_channel(b).mean_dim(1, false, Kind::Double)).sum::<Tensor>() / 3.0;
        let var: Tensor =
            batches.iter().map(|b| per_channel(b).var_dim(1, true, false)).sum::<Tensor>() / 3.0;
        let variables = vs.variables();
        let close = |name: &str, expected: &Tensor| {
            let error = (variables[name].to_kind(Kind::Double) - expected).abs().max().double_value(&[]);
            assert!(error < 1e-5, "{name}: {error}");
        };
        close("bn.running_mean", &mean);
        close("bn.running_var", &var);
    }
}
