//! Evaluation: top-1, top-5 and loss over a whole split, in eval mode without gradients. An
//! unreadable image is left out and counted, never replaced by another.
//!
//! Each process evaluates its shard and returns sums; the caller adds the ranks' sums (every image
//! is in exactly one shard) before turning them into percentages, so N processes report what one
//! would.

use serde::Serialize;
use tch::nn::ModuleT;
use tch::{Device, Kind};

use pe_data::{BadFileReport, Loader};

use crate::train::amp::Precision;
use crate::train::batch::{to_device, Normalizer};
use crate::train::loss::{correct_top_k, cross_entropy};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    pub samples: usize,
    /// Images of the split that could not be read and are not in `samples`.
    pub unreadable: usize,
}

impl EvalResult {
    /// `60 images` or `60 images (1 unreadable)`, as the result lines print it.
    pub fn counted(&self) -> String {
        match self.unreadable {
            0 => format!("{} images", self.samples),
            n => format!("{} images ({n} unreadable)", self.samples),
        }
    }
}

/// Sums over the images one process evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalSums {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub samples: f64,
    pub unreadable: f64,
}

impl EvalSums {
    /// As a flat array, for an all-reduce.
    pub fn to_array(self) -> [f64; 5] {
        [self.loss, self.top1, self.top5, self.samples, self.unreadable]
    }

    pub fn from_array([loss, top1, top5, samples, unreadable]: [f64; 5]) -> Self {
        Self { loss, top1, top5, samples, unreadable }
    }

    /// Means and percentages; an empty split is an error.
    pub fn result(self) -> anyhow::Result<EvalResult> {
        anyhow::ensure!(
            self.samples > 0.0,
            "the evaluation split has no readable image ({} unreadable)",
            self.unreadable
        );
        let n = self.samples;
        Ok(EvalResult {
            loss: self.loss / n,
            acc1: 100.0 * self.top1 / n,
            acc5: 100.0 * self.top5 / n,
            samples: n as usize,
            unreadable: self.unreadable as usize,
        })
    }
}

/// Evaluates `model` on every batch of `loader` (this process's shard); unreadable images are
/// left out, counted in the sums and listed (the first few) in the report.
pub fn evaluate(
    model: &impl ModuleT,
    loader: &Loader,
    normalizer: &Normalizer,
    device: Device,
    precision: &Precision,
) -> anyhow::Result<(EvalSums, BadFileReport)> {
    let (mut loss_sum, mut top1, mut top5, mut samples) = (0.0, 0i64, 0i64, 0usize);
    let mut epoch = loader.epoch(0);
    tch::no_grad(|| -> anyhow::Result<()> {
        for batch in epoch.by_ref() {
            let batch = batch?;
            if batch.n == 0 {
                // Every image of the batch was unreadable.
                loader.recycle(batch.images);
                continue;
            }
            let (images, labels) = to_device(&batch, device);
            // The tensors hold copies, so the buffer goes back to the loader: a fresh one per batch
            // is page-faulted and zeroed again (4 % of eval throughput at 2 workers here).
            let n = batch.n;
            loader.recycle(batch.images);
            let images = precision.input(normalizer.apply(&images))?;
            let logits = {
                let _autocast = precision.autocast(device)?;
                model.forward_t(&images, false)
            }
            .to_kind(Kind::Float);
            loss_sum += cross_entropy(&logits, &labels, 0.0).double_value(&[]) * n as f64;
            top1 += correct_top_k(&logits, &labels, 1);
            top5 += correct_top_k(&logits, &labels, 5);
            samples += n;
        }
        Ok(())
    })?;
    let bad = epoch.bad_files().clone();
    let sums = EvalSums {
        loss: loss_sum,
        top1: top1 as f64,
        top5: top5 as f64,
        samples: samples as f64,
        unreadable: bad.count as f64,
    };
    Ok((sums, bad))
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

    fn evaluate_split(cfg: &DataConfig, loader: &Loader) -> (EvalSums, BadFileReport) {
        // Two "logits" per image: the mean of its red and green channels.
        let model =
            tch::nn::func_t(|x, _| x.mean_dim([2i64, 3].as_slice(), false, Kind::Float).narrow(1, 0, 2));
        let normalizer = Normalizer::new(cfg.mean, cfg.std, Device::Cpu);
        let precision = Precision { amp: Amp::Off, channels_last: false };
        evaluate(&model, loader, &normalizer, Device::Cpu, &precision).unwrap()
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
        let result = sums.result().unwrap();
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
