//! Evaluation: loss, top-1/top-5, ReaL and the confusion matrix over a whole split, in eval mode
//! without gradients, and each image's top classes when asked for. An unreadable image is left
//! out and counted, never replaced by another.
//!
//! Each process evaluates its shard and returns a [`Tally`]; the caller adds the ranks' tallies
//! before turning them into percentages (see [`crate::eval::tally`]).

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use pe_data::{BadFileReport, Loader};

use crate::eval::labels::Targets;
use crate::eval::tally::Tally;
use crate::train::amp::Precision;
use crate::train::batch::{to_device, Normalizer};

/// What an evaluation keeps beyond the sums.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    /// The confusion matrix.
    pub confusion: bool,
    /// Each image's `top_k` classes and probabilities (0: none).
    pub top_k: usize,
}

/// One image's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Its dataset index (`Loader::sample_path` names its file).
    pub index: usize,
    /// Its class (the model's index).
    pub label: i64,
    /// The most probable classes, best first, with their probabilities (softmax over the logits
    /// the argmax runs over).
    pub top: Vec<(i64, f32)>,
}

/// A process's evaluation of its shard.
#[derive(Debug)]
pub struct Evaluation {
    pub tally: Tally,
    pub bad: BadFileReport,
    /// In loader order, when [`Keep::top_k`] asked for them.
    pub predictions: Vec<Prediction>,
}

/// The fp32 logits [B, K] of `model` in eval mode on uint8 images [B, 3, H, W] on `device`,
/// normalised and under the recipe's precision (the one forward of `pe eval` and `pe predict`).
pub fn eval_logits(
    model: &impl ModuleT,
    images: &Tensor,
    normalizer: &Normalizer,
    device: Device,
    precision: &Precision,
) -> anyhow::Result<Tensor> {
    let images = precision.input(normalizer.apply(images))?;
    let _autocast = precision.autocast(device)?;
    Ok(model.forward_t(&images, false).to_kind(Kind::Float))
}

/// Evaluates `model` on every batch of `loader` (this process's shard) against `targets`;
/// unreadable images are left out, counted and listed (the first few) in the report.
pub fn evaluate(
    model: &impl ModuleT,
    loader: &Loader,
    normalizer: &Normalizer,
    device: Device,
    precision: &Precision,
    targets: &Targets,
    keep: Keep,
) -> anyhow::Result<Evaluation> {
    let mut tally = Tally::new(if keep.confusion { targets.num_classes() } else { 0 });
    let mut predictions = Vec::new();
    let restrict = targets.restricted_to().map(|columns| Tensor::from_slice(columns).to_device(device));
    let mut epoch = loader.epoch(0);
    tch::no_grad(|| -> anyhow::Result<()> {
        for batch in epoch.by_ref() {
            let batch = batch?;
            if batch.n == 0 {
                // Every image of the batch was unreadable.
                loader.recycle(batch.images);
                continue;
            }
            let (images, _) = to_device(&batch, device);
            // The tensors hold copies, so the buffer goes back to the loader: a fresh one per batch
            // is page-faulted and zeroed again (4 % of eval throughput at 2 workers here).
            let n = batch.n;
            loader.recycle(batch.images);
            let logits = eval_logits(model, &images, normalizer, device, precision)?;
            // [B, K] -> [B, K'] when the set's classes are a subset (ImageNet-A/R).
            let logits = match &restrict {
                Some(columns) => logits.index_select(1, columns),
                None => logits,
            };
            let log_probs = logits.log_softmax(1, Kind::Float);
            let labels: Vec<i64> = batch.labels[..n].iter().map(|&l| targets.label(l)).collect();
            let columns: Vec<i64> = labels.iter().map(|&l| targets.column(l)).collect();
            let picked =
                log_probs.gather(1, &Tensor::from_slice(&columns).to_device(device).unsqueeze(1), false);
            tally.loss -= picked.sum(Kind::Double).double_value(&[]);
            let k = keep.top_k.max(5).min(log_probs.size()[1] as usize);
            let (top_log_probs, top_columns) = log_probs.topk(k as i64, 1, true, true);
            let top_columns = Vec::<i64>::try_from(top_columns.reshape([-1]).to_device(Device::Cpu))?;
            let top_probs = Vec::<f32>::try_from(top_log_probs.exp().reshape([-1]).to_device(Device::Cpu))?;
            let to_class = |column: i64| targets.restricted_to().map_or(column, |r| r[column as usize]);
            for (i, &label) in labels.iter().enumerate() {
                let top: Vec<i64> = top_columns[i * k..(i + 1) * k].iter().map(|&c| to_class(c)).collect();
                let index = batch.indices[i];
                tally.add(label, &top, targets.real(index));
                if keep.top_k > 0 {
                    let probs = &top_probs[i * k..(i + 1) * k];
                    let top = top.into_iter().zip(probs.iter().copied()).take(keep.top_k).collect();
                    predictions.push(Prediction { index, label, top });
                }
            }
        }
        Ok(())
    })?;
    let bad = epoch.bad_files().clone();
    tally.unreadable = bad.count as f64;
    Ok(Evaluation { tally, bad, predictions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Amp;
    use pe_data::{DataConfig, Split};

    /// `val/c0` and `val/c1`, five PNGs each: red 0 / 100 tells the class.
    fn two_class_split(dir: &std::path::Path) -> DataConfig {
        for class in 0..2u8 {
            let folder = dir.join("val").join(format!("c{class}"));
            std::fs::create_dir_all(&folder).unwrap();
            for k in 0..5u8 {
                let img = image::RgbImage::from_pixel(20, 16, image::Rgb([100 * class, 9 * k, 60]));
                img.save(folder.join(format!("{k}.png"))).unwrap();
            }
        }
        DataConfig { root: dir.into(), img_size: 8, ..Default::default() }
    }

    fn evaluate_split(cfg: &DataConfig, loader: &Loader) -> (Tally, BadFileReport) {
        // Two "logits" per image: the mean of its red and green channels.
        let model =
            tch::nn::func_t(|x, _| x.mean_dim([2i64, 3].as_slice(), false, Kind::Float).narrow(1, 0, 2));
        let normalizer = Normalizer::new(cfg.mean, cfg.std, Device::Cpu);
        let precision = Precision { amp: Amp::Off, channels_last: false };
        let targets = Targets::identity(vec!["c0".into(), "c1".into()]);
        let evaluation =
            evaluate(&model, loader, &normalizer, Device::Cpu, &precision, &targets, Keep::default())
                .unwrap();
        (evaluation.tally, evaluation.bad)
    }

    #[test]
    fn evaluation_hands_the_batch_buffers_back_to_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = two_class_split(dir.path());
        let loader = Loader::open(&cfg, Split::Eval { batch_size: 4, classes: None }, 0, 1).unwrap();
        let (sums, _) = evaluate_split(&cfg, &loader);
        assert_eq!(sums.samples, 10.0);
        // Three batches; how many buffers they used depends on timing, but every one came back.
        assert!(loader.spare_buffers() >= 1);
    }

    #[test]
    fn an_unreadable_image_is_left_out_and_counted_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = two_class_split(dir.path());
        let zero = dir.path().join("val/c1/zero.png");
        std::fs::write(&zero, b"").unwrap();
        // Batches of 4 over 11 files: the bad one sits inside a batch, whose other images stay.
        let loader = Loader::open(&cfg, Split::Eval { batch_size: 4, classes: None }, 0, 1).unwrap();
        let (sums, bad) = evaluate_split(&cfg, &loader);
        assert_eq!((sums.samples, sums.unreadable), (10.0, 1.0));
        assert_eq!(bad.first.iter().map(|b| b.path.clone()).collect::<Vec<_>>(), [zero]);
        // Every good image once: the green means 0, 9, ..., 36 of each class, none twice.
        let result = sums.result(false).unwrap();
        assert_eq!((result.samples, result.unreadable), (10, 1));
        assert_eq!(result.counted(), "10 images (1 unreadable)");
        let mut seen = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            let plane = 3 * 64;
            for i in 0..batch.n {
                seen.push((batch.labels[i], batch.images[i * plane + 64]));
            }
        }
        seen.sort();
        let expected: Vec<(i64, u8)> = (0..2).flat_map(|c| (0..5).map(move |k| (c, 9 * k))).collect();
        assert_eq!(seen, expected);
    }
}
