//! Evaluation: top-1, top-5 and loss over a whole split, in eval mode without gradients.

use serde::Serialize;
use tch::nn::ModuleT;
use tch::{Device, Kind};

use pe_data::Loader;

use crate::amp::Precision;
use crate::batch::{to_device, Normalizer};
use crate::loss::{correct_top_k, cross_entropy};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    pub samples: usize,
}

pub fn evaluate(
    model: &impl ModuleT,
    loader: &Loader,
    normalizer: &Normalizer,
    device: Device,
    precision: &Precision,
) -> anyhow::Result<EvalResult> {
    let (mut loss_sum, mut top1, mut top5, mut samples) = (0.0, 0i64, 0i64, 0usize);
    tch::no_grad(|| -> anyhow::Result<()> {
        for batch in loader.epoch(0) {
            let batch = batch?;
            let (images, labels) = to_device(&batch, device);
            let images = precision.input(normalizer.apply(&images))?;
            let logits = {
                let _autocast = precision.autocast(device)?;
                model.forward_t(&images, false)
            }
            .to_kind(Kind::Float);
            loss_sum += cross_entropy(&logits, &labels, 0.0).double_value(&[]) * batch.n as f64;
            top1 += correct_top_k(&logits, &labels, 1);
            top5 += correct_top_k(&logits, &labels, 5);
            samples += batch.n;
        }
        Ok(())
    })?;
    anyhow::ensure!(samples > 0, "the evaluation split is empty");
    let n = samples as f64;
    Ok(EvalResult {
        loss: loss_sum / n,
        acc1: 100.0 * top1 as f64 / n,
        acc5: 100.0 * top5 as f64 / n,
        samples,
    })
}
