//! timm's RandomErasing applied to a uint8 CHW image, its normalised-space fill mapped to pixels.
//!
//! timm erases after normalisation, filling with N(0, 1) draws (`pixel`: per pixel, `rand`: per box and
//! channel) or zeros (`const`). Our batches stay uint8 until the device normalises them, so a draw z
//! becomes the pixel `round(255 (mean_c + std_c z))` clamped to [0, 255]. That is exact up to
//! quantisation (±0.5/255 before normalisation) except for the ~2 % of draws beyond about ±2.1σ, which
//! saturate at 0 or 255. The box geometry is timm's: area U(2 %, 1/3) / count, log-uniform aspect in
//! [0.3, 1/0.3], up to 10 tries per box, `w < W and h < H`.

use crate::config::EraseMode;
use crate::rng::Rng;

/// RandomErasing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomErasing {
    /// Probability that an image is erased at all.
    pub prob: f64,
    /// Fill mode.
    pub mode: EraseMode,
    /// Boxes per erased image.
    pub count: usize,
    /// Channel means in [0, 1].
    pub mean: [f64; 3],
    /// Channel stds in [0, 1].
    pub std: [f64; 3],
}

/// One erased rectangle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraseBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

const MIN_AREA: f64 = 0.02;
const MAX_AREA: f64 = 1.0 / 3.0;
const MIN_ASPECT: f64 = 0.3;

impl RandomErasing {
    fn pixel(&self, c: usize, z: f64) -> u8 {
        (255.0 * (self.mean[c] + self.std[c] * z)).round().clamp(0.0, 255.0) as u8
    }

    /// Erase in place in a `3 x h x w` uint8 image; returns the boxes erased (for tests and logging).
    pub fn apply(&self, chw: &mut [u8], h: usize, w: usize, rng: &mut Rng) -> Vec<EraseBox> {
        let mut boxes = Vec::new();
        if rng.f64() > self.prob {
            return boxes;
        }
        let area = (h * w) as f64;
        let log_aspect = (MIN_ASPECT.ln(), (1.0 / MIN_ASPECT).ln());
        for _ in 0..self.count {
            for _ in 0..10 {
                let target = rng.uniform(MIN_AREA, MAX_AREA) * area / self.count as f64;
                let aspect = rng.uniform(log_aspect.0, log_aspect.1).exp();
                let bh = (target * aspect).sqrt().round_ties_even() as usize;
                let bw = (target / aspect).sqrt().round_ties_even() as usize;
                if bw < w && bh < h {
                    let top = rng.randint(0, (h - bh) as i64) as usize;
                    let left = rng.randint(0, (w - bw) as i64) as usize;
                    let b = EraseBox { top, left, height: bh, width: bw };
                    self.fill(chw, h, w, b, rng);
                    boxes.push(b);
                    break;
                }
            }
        }
        boxes
    }

    fn fill(&self, chw: &mut [u8], h: usize, w: usize, b: EraseBox, rng: &mut Rng) {
        for c in 0..3 {
            let colour = match self.mode {
                EraseMode::Const => Some(self.pixel(c, 0.0)),
                EraseMode::Rand => Some(self.pixel(c, rng.normal())),
                EraseMode::Pixel => None,
            };
            for y in b.top..b.top + b.height {
                let row = &mut chw[c * h * w + y * w + b.left..c * h * w + y * w + b.left + b.width];
                match colour {
                    Some(v) => row.fill(v),
                    None => row.iter_mut().for_each(|p| *p = self.pixel(c, rng.normal())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IMAGENET_MEAN, IMAGENET_STD};
    use crate::rng::Stream;

    fn re(prob: f64, mode: EraseMode) -> RandomErasing {
        RandomErasing { prob, mode, count: 1, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    #[test]
    fn box_geometry_follows_timm() {
        let (h, w) = (64, 48);
        let mut n_erased = 0;
        for i in 0..2000 {
            let mut img = vec![7u8; 3 * h * w];
            let boxes =
                re(0.5, EraseMode::Const).apply(&mut img, h, w, &mut Rng::keyed(Stream::Sample, &[i]));
            n_erased += !boxes.is_empty() as usize;
            for b in &boxes {
                assert!(b.width < w && b.height < h && b.top + b.height <= h && b.left + b.width <= w);
                let frac = (b.width * b.height) as f64 / (h * w) as f64;
                assert!(frac > 0.015 && frac < 0.36, "{frac}");
                // const = zero in normalised space = the mean colour.
                assert_eq!(img[b.top * w + b.left], 124);
                assert_eq!(img[h * w + b.top * w + b.left], 116);
                assert_eq!(img[2 * h * w + b.top * w + b.left], 104);
            }
            let changed = img.iter().filter(|&&v| v != 7).count();
            assert_eq!(changed, boxes.iter().map(|b| 3 * b.width * b.height).sum::<usize>());
        }
        assert!((900..1100).contains(&n_erased), "{n_erased}");
    }

    #[test]
    fn pixel_mode_has_normal_statistics_in_normalised_space() {
        let (h, w) = (200, 200);
        let mut img = vec![0u8; 3 * h * w];
        let mut rng = Rng::keyed(Stream::Sample, &[5]);
        let b = re(1.0, EraseMode::Pixel).apply(&mut img, h, w, &mut rng)[0];
        let vals: Vec<f64> = (b.top..b.top + b.height)
            .flat_map(|y| (b.left..b.left + b.width).map(move |x| (y, x)))
            .map(|(y, x)| (img[y * w + x] as f64 / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
        // Saturation at 0/255 trims the tails a little: std slightly below 1.
        assert!(mean.abs() < 0.05 && (0.85..1.02).contains(&var.sqrt()), "{mean} {var}");
        // rand mode: one colour per channel.
        let mut img = vec![0u8; 3 * h * w];
        let b = re(1.0, EraseMode::Rand).apply(&mut img, h, w, &mut rng)[0];
        let first = img[b.top * w + b.left];
        assert!((b.top..b.top + b.height)
            .all(|y| img[y * w + b.left..y * w + b.left + b.width].iter().all(|&v| v == first)));
    }

    #[test]
    fn prob_zero_never_erases() {
        let mut img = vec![9u8; 3 * 10 * 10];
        assert!(re(0.0, EraseMode::Pixel)
            .apply(&mut img, 10, 10, &mut Rng::keyed(Stream::Sample, &[1]))
            .is_empty());
        assert!(img.iter().all(|&v| v == 9));
    }
}
