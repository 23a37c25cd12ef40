//! Crop geometry: torchvision's RandomResizedCrop parameters and the eval resize + center crop.
//!
//! Only integer boxes are sampled here; pixels are touched in `resize`. Python's `round` rounds half to
//! even, and so do we (`round_ties_even`), so boxes match torchvision's for the same random draws.

use crate::rng::Rng;

/// An integer crop box in pixels, as torchvision returns it (`i, j, h, w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row (`i`).
    pub top: usize,
    /// First column (`j`).
    pub left: usize,
    /// Rows (`h`).
    pub height: usize,
    /// Columns (`w`).
    pub width: usize,
}

/// A fractional source region (left, top, width, height) that is resampled to the output size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    /// Left edge in source pixels.
    pub left: f64,
    /// Top edge in source pixels.
    pub top: f64,
    /// Width in source pixels.
    pub width: f64,
    /// Height in source pixels.
    pub height: f64,
}

impl From<CropBox> for Region {
    fn from(b: CropBox) -> Self {
        Region { left: b.left as f64, top: b.top as f64, width: b.width as f64, height: b.height as f64 }
    }
}

/// `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction in `scale` and a log-uniform
/// aspect ratio in `ratio` that fit the image, then the fallback center crop clamped to `ratio`.
pub fn random_resized_crop(
    width: usize,
    height: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let log_ratio = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale[0], scale[1]);
        let aspect = rng.uniform(log_ratio.0, log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && h > 0.0 && w <= width as f64 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = rng.randint(0, (height - h) as i64) as usize;
            let left = rng.randint(0, (width - w) as i64) as usize;
            return CropBox { top, left, height: h, width: w };
        }
    }
    center_fallback(width, height, ratio)
}

/// The fallback of `RandomResizedCrop.get_params`: the whole image, narrowed to the nearest allowed
/// aspect ratio, centered.
pub fn center_fallback(width: usize, height: usize, ratio: [f64; 2]) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (width, ((width as f64 / ratio[0]).round_ties_even() as usize).clamp(1, height))
    } else if in_ratio > ratio[1] {
        (((height as f64 * ratio[1]).round_ties_even() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer one
/// `int(size * long / short)`.
pub fn resize_shorter(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = ((size as f64 * long as f64 / short as f64) as usize).max(1);
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `CenterCrop` offsets: `int(round((in - out) / 2))` per axis.
pub fn center_crop(width: usize, height: usize, out_w: usize, out_h: usize) -> CropBox {
    let off = |a: usize, b: usize| ((a.saturating_sub(b)) as f64 / 2.0).round_ties_even() as usize;
    CropBox { top: off(height, out_h), left: off(width, out_w), height: out_h, width: out_w }
}

/// Eval geometry (timm `crop_pct` / torchvision `Resize(floor(size / crop_pct))` + `CenterCrop(size)`),
/// expressed as the source region that the final `size x size` image resamples. Resizing that region
/// directly gives the same filter scale and centers as resize-then-crop, without the big intermediate.
pub fn eval_region(width: usize, height: usize, img_size: usize, crop_pct: f64) -> Region {
    let scale_size = (img_size as f64 / crop_pct).floor() as usize;
    let (rw, rh) = resize_shorter(width, height, scale_size);
    let b = center_crop(rw, rh, img_size.min(rw), img_size.min(rh));
    let sx = width as f64 / rw as f64;
    let sy = height as f64 / rh as f64;
    // If the resized image were smaller than the crop (crop_pct > 1 is rejected by the config, but keep
    // this total), the whole image is used.
    Region {
        left: b.left as f64 * sx,
        top: b.top as f64 * sy,
        width: b.width as f64 * sx,
        height: b.height as f64 * sy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn rrc_boxes_fit_and_respect_scale_and_ratio() {
        let mut rng = Rng::keyed(Stream::Sample, &[1]);
        let (w, h) = (500, 375);
        let mut fallbacks = 0;
        for _ in 0..20_000 {
            let b = random_resized_crop(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(b.left + b.width <= w && b.top + b.height <= h && b.width > 0 && b.height > 0);
            if b == center_fallback(w, h, [0.75, 4.0 / 3.0]) {
                fallbacks += 1;
                continue;
            }
            let area = (b.width * b.height) as f64 / (w * h) as f64;
            // Rounding of the sides moves the area/ratio by at most about one pixel row/column.
            assert!(area > 0.08 * 0.97 && area <= 1.0, "area {area}");
            let r = b.width as f64 / b.height as f64;
            assert!(r > 0.75 * 0.97 && r < 4.0 / 3.0 * 1.03, "ratio {r}");
        }
        // The fallback happens only when 10 tries all miss, rare for a 4:3 photo.
        assert!(fallbacks < 200, "{fallbacks}");
    }

    #[test]
    fn rrc_fallback_is_torchvisions_center_crop() {
        // A very wide image: every try fails for scale near 1 with tall ratios; force the fallback.
        assert_eq!(
            center_fallback(1000, 100, [0.75, 4.0 / 3.0]),
            CropBox { top: 0, left: 433, height: 100, width: 133 }
        );
        assert_eq!(
            center_fallback(100, 1000, [0.75, 4.0 / 3.0]),
            CropBox { top: 433, left: 0, height: 133, width: 100 }
        );
        assert_eq!(
            center_fallback(120, 100, [0.75, 4.0 / 3.0]),
            CropBox { top: 0, left: 0, height: 100, width: 120 }
        );
        // scale = [1, 1] and a 10:1 image: no try can fit, so the fallback is what comes out.
        let mut rng = Rng::keyed(Stream::Sample, &[2]);
        assert_eq!(
            random_resized_crop(1000, 100, [1.0, 1.0], [0.75, 4.0 / 3.0], &mut rng),
            center_fallback(1000, 100, [0.75, 4.0 / 3.0])
        );
    }

    #[test]
    fn rrc_mean_area_matches_torchvision() {
        // Rejected tries (too wide or tall to fit) bias the accepted areas low. torchvision 0.26's
        // `RandomResizedCrop.get_params` over 40,000 draws gives a mean area fraction of 0.4783 on a
        // 1000x1000 image and 0.4330 on 500x375.
        let mut rng = Rng::keyed(Stream::Sample, &[3]);
        for (w, h, want) in [(1000, 1000, 0.4783), (500, 375, 0.4330)] {
            let n = 40_000;
            let mean: f64 = (0..n)
                .map(|_| {
                    let b = random_resized_crop(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
                    (b.width * b.height) as f64 / (w * h) as f64
                })
                .sum::<f64>()
                / n as f64;
            assert!((mean - want).abs() < 0.008, "{w}x{h}: {mean} vs {want}");
        }
    }

    #[test]
    fn eval_resize_and_center_crop_match_torchvision() {
        // torchvision: Resize(256) of 500x375 -> 341x256; CenterCrop(224) -> left round(58.5)=58, top 16.
        assert_eq!(resize_shorter(500, 375, 256), (341, 256));
        assert_eq!(resize_shorter(375, 500, 256), (256, 341));
        assert_eq!(center_crop(341, 256, 224, 224), CropBox { top: 16, left: 58, height: 224, width: 224 });
        // Python's round(0.5) == 0, round(1.5) == 2.
        assert_eq!(center_crop(225, 227, 224, 224).left, 0);
        assert_eq!(center_crop(227, 227, 224, 224).left, 2);
        let r = eval_region(500, 375, 224, 0.875);
        let s = 375.0 / 256.0;
        assert!((r.height - 224.0 * s).abs() < 1e-9 && (r.top - 16.0 * s).abs() < 1e-9);
        assert!((r.width - 224.0 * 500.0 / 341.0).abs() < 1e-9);
        assert!((r.left - 58.0 * 500.0 / 341.0).abs() < 1e-9);
        // floor(224 / 0.875) = 256 exactly; floor(224 / 0.9) = 248.
        assert_eq!(resize_shorter(28, 28, (224.0f64 / 0.9).floor() as usize), (248, 248));
    }
}
