//! Mixup and CutMix with timm's semantics (`mode='batch'`): the per-batch plan and the soft targets.
//!
//! A batch draws one plan (timm `_params_per_batch`): with probability `prob` it is mixed; when both
//! alphas are on, CutMix is chosen with `switch_prob`; λ ~ Beta(α, α). CutMix cuts a box of sides
//! `int(H √(1-λ))`, `int(W √(1-λ))` around a uniform center, clipped to the image, and λ is corrected to
//! `1 - box area / image area`. The partner of sample i is [`partner`]`(i, N)` = N-1-i (the batch
//! flipped); the runner mixes pixels with the same function.
//! Targets are `λ y_i + (1-λ) y_{N-1-i}` with label smoothing `on = 1 - ε + ε/K`, `off = ε/K`.
//!
//! Pixels are mixed by the runner on the device after normalising (`pe_runner::batch::mix`): a
//! Mixup blend of uint8 images would have to round, and because normalisation is affine and
//! λ + (1-λ) = 1, mixing before or after normalising is the same.

use crate::config::DataConfig;
use crate::rng::{Rng, Stream};

/// Mixup/CutMix settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixup {
    /// Mixup Beta(α, α); 0 = off.
    pub mixup_alpha: f64,
    /// CutMix Beta(α, α); 0 = off.
    pub cutmix_alpha: f64,
    /// Probability a batch is mixed.
    pub prob: f64,
    /// Probability of CutMix when both are on.
    pub switch_prob: f64,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Number of classes K.
    pub num_classes: usize,
}

/// What a batch gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MixKind {
    /// Unchanged images (λ = 1).
    None,
    /// Blend with the flipped batch.
    Mixup,
    /// Paste the flipped batch's box `[top, top + height) x [left, left + width)`.
    CutMix {
        /// First row.
        top: usize,
        /// First column.
        left: usize,
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

/// One batch's mixing decision; partner of i is N-1-i.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixPlan {
    /// Weight of each sample's own image and label (after CutMix's area correction).
    pub lambda: f64,
    /// Mixup, CutMix or nothing.
    pub kind: MixKind,
}

impl Mixup {
    /// From the config; `None` when both alphas are 0 (timm then does not mix at all).
    pub fn from_config(cfg: &DataConfig, num_classes: usize) -> Option<Self> {
        (cfg.mixup_alpha > 0.0 || cfg.cutmix_alpha > 0.0).then_some(Mixup {
            mixup_alpha: cfg.mixup_alpha,
            cutmix_alpha: cfg.cutmix_alpha,
            prob: cfg.mixup_prob,
            switch_prob: cfg.mixup_switch_prob,
            label_smoothing: cfg.label_smoothing,
            num_classes,
        })
    }

    /// The plan for a batch of `h x w` images, drawn from `rng`.
    pub fn plan(&self, h: usize, w: usize, rng: &mut Rng) -> MixPlan {
        let none = MixPlan { lambda: 1.0, kind: MixKind::None };
        if rng.f64() >= self.prob {
            return none;
        }
        let (cutmix, alpha) = if self.mixup_alpha > 0.0 && self.cutmix_alpha > 0.0 {
            let c = rng.f64() < self.switch_prob;
            (c, if c { self.cutmix_alpha } else { self.mixup_alpha })
        } else if self.mixup_alpha > 0.0 {
            (false, self.mixup_alpha)
        } else if self.cutmix_alpha > 0.0 {
            (true, self.cutmix_alpha)
        } else {
            return none;
        };
        let lambda = rng.beta(alpha, alpha);
        if lambda == 1.0 {
            return none;
        }
        if !cutmix {
            return MixPlan { lambda, kind: MixKind::Mixup };
        }
        let cy = rng.below(h as u64) as usize;
        let cx = rng.below(w as u64) as usize;
        MixPlan::cutmix(h, w, lambda, cy, cx)
    }

    /// The plan of batch `batch_index` of `epoch` (keyed, so it does not depend on consumption order).
    pub fn plan_for(
        &self,
        seed: u64,
        epoch: u64,
        batch_index: u64,
        rank: u64,
        h: usize,
        w: usize,
    ) -> MixPlan {
        self.plan(h, w, &mut Rng::keyed(Stream::Mix, &[seed, epoch, batch_index, rank]))
    }

    /// Soft targets `[N, K]` for `labels` under `plan`.
    pub fn soft_targets(&self, labels: &[i64], plan: &MixPlan) -> Vec<f32> {
        soft_targets(labels, self.num_classes, self.label_smoothing, plan.lambda)
    }
}

/// timm `mixup_target`: smoothed one-hot rows, mixed with the flipped batch's rows by λ.
/// Labels outside `0..num_classes` get no "on" entry (callers validate labels upstream).
pub fn soft_targets(labels: &[i64], num_classes: usize, smoothing: f64, lambda: f64) -> Vec<f32> {
    let n = labels.len();
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let mut out = vec![0f32; n * num_classes];
    for i in 0..n {
        let row = &mut out[i * num_classes..(i + 1) * num_classes];
        let (a, b) = (labels[i], labels[partner(i, n)]);
        for (k, v) in row.iter_mut().enumerate() {
            let ya = if a == k as i64 { on } else { off };
            let yb = if b == k as i64 { on } else { off };
            *v = (lambda * ya + (1.0 - lambda) * yb) as f32;
        }
    }
    out
}

/// The sample whose image and label sample `i` of an `n`-sample batch is mixed with (the batch
/// flipped, as timm); the middle sample of an odd batch is its own partner.
pub fn partner(i: usize, n: usize) -> usize {
    n - 1 - i
}

impl MixPlan {
    /// timm's `rand_bbox` + `cutmix_bbox_and_lam` for a drawn `lambda` and box center `(cy, cx)`:
    /// sides `int(H √(1-λ))` x `int(W √(1-λ))`, clipped to the image, λ corrected to the kept area.
    pub fn cutmix(h: usize, w: usize, lambda: f64, cy: usize, cx: usize) -> Self {
        let ratio = (1.0 - lambda).sqrt();
        let span = |size: usize, center: usize| {
            let cut = (size as f64 * ratio) as usize;
            (center.saturating_sub(cut / 2), (center + cut.div_ceil(2)).min(size))
        };
        let ((top, bottom), (left, right)) = (span(h, cy), span(w, cx));
        let (height, width) = (bottom - top, right - left);
        let lambda = 1.0 - (height * width) as f64 / (h * w) as f64;
        MixPlan { lambda, kind: MixKind::CutMix { top, left, height, width } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixup(m: f64, c: f64) -> Mixup {
        Mixup {
            mixup_alpha: m,
            cutmix_alpha: c,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            num_classes: 5,
        }
    }

    #[test]
    fn targets_sum_to_one_and_smooth() {
        let labels = [0i64, 3, 4, 1];
        let t = soft_targets(&labels, 5, 0.1, 0.7);
        for row in t.chunks(5) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Row 0: label 0 with weight .7, partner (row 3) label 1 with .3.
        assert!((t[0] - (0.7 * 0.92 + 0.3 * 0.02) as f32).abs() < 1e-6);
        assert!((t[1] - (0.7 * 0.02 + 0.3 * 0.92) as f32).abs() < 1e-6);
        assert!((t[2] - 0.02).abs() < 1e-6);
    }

    #[test]
    fn cutmix_boxes_stay_inside_and_lambda_is_the_kept_area() {
        let (h, w) = (20, 30);
        let m = mixup(0.0, 1.0);
        for seed in 0..200 {
            let plan = m.plan_for(seed, 0, 0, 0, h, w);
            let MixKind::CutMix { top, left, height, width } = plan.kind else {
                assert_eq!(plan.lambda, 1.0);
                continue;
            };
            assert!(top + height <= h && left + width <= w);
            assert!((plan.lambda - (1.0 - (height * width) as f64 / 600.0)).abs() < 1e-12);
        }
        // A center in the corner clips the box: λ = 0.75 wants 10 x 15, keeps the lower-right 5 x 8.
        let plan = MixPlan::cutmix(h, w, 0.75, 0, 0);
        assert_eq!(plan.kind, MixKind::CutMix { top: 0, left: 0, height: 5, width: 8 });
        assert!((plan.lambda - (1.0 - 40.0 / 600.0)).abs() < 1e-12);
    }

    #[test]
    fn partners_are_the_flipped_batch_and_alpha_zero_is_identity() {
        assert_eq!((0..5).map(|i| partner(i, 5)).collect::<Vec<_>>(), [4, 3, 2, 1, 0]);
        // α = 0 for both: no Mixup object at all; prob = 0: identity plan.
        assert!(Mixup::from_config(&DataConfig::default(), 10).is_none());
        let m = Mixup { prob: 0.0, ..mixup(0.8, 1.0) };
        let plan = m.plan_for(1, 2, 3, 0, 8, 8);
        assert_eq!(plan, MixPlan { lambda: 1.0, kind: MixKind::None });
        let t = m.soft_targets(&[2, 4], &plan);
        assert_eq!(t, soft_targets(&[2, 4], 5, 0.1, 1.0));
        assert!((t[2] - 0.92).abs() < 1e-6);
    }

    #[test]
    fn switch_prob_and_beta_lambda_statistics() {
        let m = mixup(0.8, 1.0);
        let n = 4000;
        let (mut cut, mut mix_sum, mut mix_n, mut cut_sum) = (0, 0.0, 0, 0.0);
        for b in 0..n {
            let p = m.plan_for(0, 0, b, 0, 224, 224);
            assert!((0.0..=1.0).contains(&p.lambda));
            match p.kind {
                MixKind::CutMix { .. } => {
                    cut += 1;
                    cut_sum += p.lambda;
                }
                MixKind::Mixup => {
                    mix_n += 1;
                    mix_sum += p.lambda;
                }
                MixKind::None => {}
            }
        }
        assert!((cut as f64 / n as f64 - 0.5).abs() < 0.03);
        // E[λ] = 0.5 for a symmetric Beta; CutMix's border clipping only shrinks boxes, raising λ.
        assert!((mix_sum / mix_n as f64 - 0.5).abs() < 0.03);
        assert!(cut_sum / cut as f64 > 0.5);
    }
}
