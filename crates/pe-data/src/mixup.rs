//! Mixup and CutMix on a batch with timm's semantics (`mode='batch'`), as a plan plus two appliers.
//!
//! A batch draws one plan (timm `_params_per_batch`): with probability `prob` it is mixed; when both
//! alphas are on, CutMix is chosen with `switch_prob`; λ ~ Beta(α, α). CutMix cuts a box of sides
//! `int(H √(1-λ))`, `int(W √(1-λ))` around a uniform center, clipped to the image, and λ is corrected to
//! `1 - box area / image area`. The partner of sample i is sample N-1-i (the batch flipped).
//! Targets are `λ y_i + (1-λ) y_{N-1-i}` with label smoothing `on = 1 - ε + ε/K`, `off = ε/K`.
//!
//! Where to mix: CutMix only copies pixels, so doing it on the uint8 host batch is exact. A Mixup
//! blend of uint8 images must round; the runner can instead apply the plan on the device after
//! converting to float (`x = λ x + (1-λ) x.flip(0)`, exact timm semantics; because normalisation is
//! affine and λ + (1-λ) = 1, mixing before or after normalising is the same). [`MixPlan::apply_u8`]
//! does both kinds on the host, rounding blends to the nearest integer (error ≤ 0.5/255).

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
        let ratio = (1.0 - lambda).sqrt();
        let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
        let cy = rng.below(h as u64) as i64;
        let cx = rng.below(w as u64) as i64;
        let (yl, yh) = ((cy - cut_h / 2).clamp(0, h as i64), (cy + (cut_h + 1) / 2).clamp(0, h as i64));
        let (xl, xh) = ((cx - cut_w / 2).clamp(0, w as i64), (cx + (cut_w + 1) / 2).clamp(0, w as i64));
        let (height, width) = ((yh - yl) as usize, (xh - xl) as usize);
        let lambda = 1.0 - (height * width) as f64 / (h * w) as f64;
        MixPlan { lambda, kind: MixKind::CutMix { top: yl as usize, left: xl as usize, height, width } }
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
        let (a, b) = (labels[i], labels[n - 1 - i]);
        for (k, v) in row.iter_mut().enumerate() {
            let ya = if a == k as i64 { on } else { off };
            let yb = if b == k as i64 { on } else { off };
            *v = (lambda * ya + (1.0 - lambda) * yb) as f32;
        }
    }
    out
}

impl MixPlan {
    /// Mix a uint8 `[N, C, H, W]` batch in place (CutMix exact, Mixup rounded to nearest).
    pub fn apply_u8(&self, images: &mut [u8], n: usize, c: usize, h: usize, w: usize) {
        let per = c * h * w;
        assert_eq!(images.len(), n * per, "batch buffer is not N x C x H x W");
        // Pairs (i, n-1-i) exchange data symmetrically, so each pair is processed once with both
        // originals in hand; the middle sample of an odd batch is its own partner (unchanged).
        for i in 0..n / 2 {
            let j = n - 1 - i;
            let (head, tail) = images.split_at_mut(j * per);
            let a = &mut head[i * per..(i + 1) * per];
            let b = &mut tail[..per];
            match self.kind {
                MixKind::None => {}
                MixKind::Mixup => {
                    let l = self.lambda;
                    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                        let (xf, yf) = (*x as f64, *y as f64);
                        *x = (l * xf + (1.0 - l) * yf).round() as u8;
                        *y = (l * yf + (1.0 - l) * xf).round() as u8;
                    }
                }
                MixKind::CutMix { top, left, height, width } => {
                    for ch in 0..c {
                        for y in top..top + height {
                            let o = ch * h * w + y * w + left;
                            a[o..o + width].swap_with_slice(&mut b[o..o + width]);
                        }
                    }
                }
            }
        }
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
    fn cutmix_lambda_equals_the_pasted_area() {
        let (n, c, h, w) = (4, 3, 20, 30);
        let m = mixup(0.0, 1.0);
        for seed in 0..200 {
            let plan = m.plan_for(seed, 0, 0, 0, h, w);
            let MixKind::CutMix { top, left, height, width } = plan.kind else {
                assert_eq!(plan.lambda, 1.0);
                continue;
            };
            assert!(top + height <= h && left + width <= w);
            let mut imgs: Vec<u8> = (0..n).flat_map(|i| vec![i as u8 * 50; c * h * w]).collect();
            plan.apply_u8(&mut imgs, n, c, h, w);
            let img0 = &imgs[..c * h * w];
            let pasted = img0.iter().filter(|&&v| v == 150).count() as f64 / (c * h * w) as f64;
            assert!((1.0 - pasted - plan.lambda).abs() < 1e-12, "seed {seed}");
        }
    }

    #[test]
    fn mixup_blends_and_alpha_zero_is_identity() {
        let (n, c, h, w) = (3, 1, 2, 2);
        let mut imgs = vec![0u8, 0, 0, 0, 9, 9, 9, 9, 200, 200, 200, 200];
        let plan = MixPlan { lambda: 0.75, kind: MixKind::Mixup };
        plan.apply_u8(&mut imgs, n, c, h, w);
        assert_eq!(&imgs[..4], &[50, 50, 50, 50]);
        assert_eq!(&imgs[4..8], &[9, 9, 9, 9]); // middle of an odd batch is its own partner
        assert_eq!(&imgs[8..], &[150, 150, 150, 150]);
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
