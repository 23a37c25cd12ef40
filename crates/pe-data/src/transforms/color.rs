//! Pixel-value operations with Pillow's semantics: LUT ops (`ImageOps`) and blends (`ImageEnhance`).
//!
//! RandAugment and ColorJitter are defined by what Pillow does, so these follow Pillow's integer
//! arithmetic: ITU-R 601 luma with 16-bit fixed-point weights, `Image.blend` truncating toward zero
//! after clamping, the contrast mean rounded to an integer, the 3x3 SMOOTH kernel for sharpness.

use crate::decode::RgbImage;

/// Pillow's `convert("L")`: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
#[inline]
pub fn luma(p: &[u8]) -> u8 {
    ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
}

/// Apply one 256-entry LUT to every channel.
pub fn apply_lut(img: &mut RgbImage, lut: &[u8; 256]) {
    let n = img.width * img.height * 3;
    for v in &mut img.data[..n] {
        *v = lut[*v as usize];
    }
}

/// Apply a LUT per channel.
pub fn apply_luts(img: &mut RgbImage, luts: &[[u8; 256]; 3]) {
    let n = img.width * img.height * 3;
    for p in img.data[..n].chunks_exact_mut(3) {
        p[0] = luts[0][p[0] as usize];
        p[1] = luts[1][p[1] as usize];
        p[2] = luts[2][p[2] as usize];
    }
}

/// Per-channel 256-bin histograms.
pub fn histograms(img: &RgbImage) -> [[u32; 256]; 3] {
    let mut h = [[0u32; 256]; 3];
    for p in img.pixels().chunks_exact(3) {
        h[0][p[0] as usize] += 1;
        h[1][p[1] as usize] += 1;
        h[2][p[2] as usize] += 1;
    }
    h
}

/// `ImageOps.invert`.
pub fn invert(img: &mut RgbImage) {
    let n = img.width * img.height * 3;
    img.data[..n].iter_mut().for_each(|v| *v = 255 - *v);
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
pub fn solarize(img: &mut RgbImage, threshold: u32) {
    let lut: [u8; 256] = std::array::from_fn(|i| if i as u32 >= threshold { 255 - i as u8 } else { i as u8 });
    apply_lut(img, &lut);
}

/// timm's `solarize_add`: values below `threshold` get `add` added (saturating).
pub fn solarize_add(img: &mut RgbImage, add: u32, threshold: u32) {
    let lut: [u8; 256] =
        std::array::from_fn(
            |i| if (i as u32) < threshold { (i as u32 + add).min(255) as u8 } else { i as u8 },
        );
    apply_lut(img, &lut);
}

/// `ImageOps.posterize(img, bits)`: keep the `bits` most significant bits (8 or more: unchanged).
pub fn posterize(img: &mut RgbImage, bits: u32) {
    if bits >= 8 {
        return;
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    let lut: [u8; 256] = std::array::from_fn(|i| i as u8 & mask);
    apply_lut(img, &lut);
}

/// `ImageOps.autocontrast(img)` (cutoff 0): stretch each channel's [min, max] to [0, 255].
pub fn autocontrast(img: &mut RgbImage) {
    let hist = histograms(img);
    let luts: [[u8; 256]; 3] = std::array::from_fn(|c| {
        let h = &hist[c];
        let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&n| n > 0).unwrap_or(255);
        if hi <= lo {
            std::array::from_fn(|i| i as u8)
        } else {
            let scale = 255.0 / (hi - lo) as f64;
            let offset = -(lo as f64) * scale;
            std::array::from_fn(|i| (i as f64 * scale + offset).clamp(0.0, 255.0) as u8)
        }
    });
    apply_luts(img, &luts);
}

/// `ImageOps.equalize(img)`: per-channel histogram equalisation with Pillow's step rule.
pub fn equalize(img: &mut RgbImage) {
    let hist = histograms(img);
    let luts: [[u8; 256]; 3] = std::array::from_fn(|c| {
        let h = &hist[c];
        let last_nonzero = h.iter().rposition(|&n| n > 0).map(|i| h[i]).unwrap_or(0);
        let total: u32 = h.iter().sum();
        let step = (total - last_nonzero) / 255;
        if step == 0 {
            return std::array::from_fn(|i| i as u8);
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[i];
            v
        })
    });
    apply_luts(img, &luts);
}

/// `Image.blend(degenerate, img, factor)` written back into `img`: `d + f (x - d)`, clamped to [0, 255]
/// and truncated, as Pillow does.
#[inline]
fn blend_px(d: f32, x: u8, f: f32) -> u8 {
    (d + f * (x as f32 - d)).clamp(0.0, 255.0) as u8
}

/// `ImageEnhance.Brightness(img).enhance(f)`: blend with black.
///
/// The result depends on the byte alone, so it goes through a 256-entry table (the same arithmetic,
/// once per value instead of once per byte).
pub fn brightness(img: &mut RgbImage, f: f32) {
    let lut: [u8; 256] = std::array::from_fn(|v| blend_px(0.0, v as u8, f));
    apply_lut(img, &lut);
}

/// `ImageEnhance.Color(img).enhance(f)`: blend with the image's own grayscale (saturation).
pub fn color(img: &mut RgbImage, f: f32) {
    crate::transforms::avx2_dispatch!(color_impl, color_avx2, img, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn color_avx2(img: &mut RgbImage, f: f32) {
    color_impl(img, f)
}

#[inline(always)]
fn color_impl(img: &mut RgbImage, f: f32) {
    let n = img.width * img.height * 3;
    for p in img.data[..n].chunks_exact_mut(3) {
        let l = luma(p) as f32;
        p[0] = blend_px(l, p[0], f);
        p[1] = blend_px(l, p[1], f);
        p[2] = blend_px(l, p[2], f);
    }
}

/// `ImageEnhance.Contrast(img).enhance(f)`: blend with the mean luma, rounded to an integer.
pub fn contrast(img: &mut RgbImage, f: f32) {
    let n = img.width * img.height;
    if n == 0 {
        return;
    }
    let sum: u64 = img.pixels().chunks_exact(3).map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / n as f64 + 0.5).floor() as f32;
    // Per-byte result with a fixed mean: a table, as for brightness.
    let lut: [u8; 256] = std::array::from_fn(|v| blend_px(mean, v as u8, f));
    apply_lut(img, &lut);
}

/// `ImageEnhance.Sharpness(img).enhance(f)`: blend with the SMOOTH-filtered image
/// (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13); border pixels are left as they are, as in Pillow.
///
/// Written over whole rows of bytes (the three source rows as shifted slices), so the integer sums,
/// the rounding and the blend vectorise; `smooth = floor(s / 13 + 0.5)` is a truncating cast since
/// the value is positive, which avoids a libm `floor` call per byte.
pub fn sharpness(img: &mut RgbImage, f: f32, scratch: &mut Vec<u8>) {
    crate::transforms::avx2_dispatch!(sharpness_impl, sharpness_avx2, img, f, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sharpness_avx2(img: &mut RgbImage, f: f32, scratch: &mut Vec<u8>) {
    sharpness_impl(img, f, scratch)
}

#[inline(always)]
fn sharpness_impl(img: &mut RgbImage, f: f32, scratch: &mut Vec<u8>) {
    let (w, h) = (img.width, img.height);
    if w < 3 || h < 3 {
        return;
    }
    scratch.clear();
    scratch.extend_from_slice(img.pixels());
    let src = &scratch[..];
    let stride = w * 3;
    // Interior bytes of a row: pixels 1..w-1, all three channels.
    let n = (w - 2) * 3;
    for y in 1..h - 1 {
        let (up, mid, down) = (&src[(y - 1) * stride..], &src[y * stride..], &src[(y + 1) * stride..]);
        let dst = &mut img.data[y * stride + 3..y * stride + 3 + n];
        let taps = up[..n].iter().zip(&up[3..n + 3]).zip(&up[6..n + 6]);
        let taps = taps.zip(mid[..n].iter().zip(&mid[3..n + 3]).zip(&mid[6..n + 6]));
        let taps = taps.zip(down[..n].iter().zip(&down[3..n + 3]).zip(&down[6..n + 6]));
        for (o, ((((u0, u1), u2), ((m0, m1), m2)), ((d0, d1), d2))) in dst.iter_mut().zip(taps) {
            let s = *u0 as u32
                + *u1 as u32
                + *u2 as u32
                + *m0 as u32
                + 5 * *m1 as u32
                + *m2 as u32
                + *d0 as u32
                + *d1 as u32
                + *d2 as u32;
            let smooth = ((s as f32 / 13.0) + 0.5) as u32 as f32;
            *o = blend_px(smooth, *m1, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(px: &[[u8; 3]]) -> RgbImage {
        RgbImage { width: px.len(), height: 1, data: px.iter().flatten().copied().collect() }
    }

    #[test]
    fn luts_match_pillow() {
        let mut a = img(&[[0, 127, 128], [200, 255, 3]]);
        solarize(&mut a, 128);
        assert_eq!(a.data, vec![0, 127, 127, 55, 0, 3]);
        let mut a = img(&[[0, 127, 128], [200, 255, 3]]);
        solarize_add(&mut a, 110, 128);
        assert_eq!(a.data, vec![110, 237, 128, 200, 255, 113]);
        let mut a = img(&[[0, 127, 128], [200, 255, 3]]);
        posterize(&mut a, 1);
        assert_eq!(a.data, vec![0, 0, 128, 128, 128, 0]);
        let mut a = img(&[[0, 127, 128]]);
        posterize(&mut a, 0);
        assert_eq!(a.data, vec![0, 0, 0]);
        let mut a = img(&[[10, 20, 30], [20, 40, 30]]);
        autocontrast(&mut a);
        assert_eq!(a.data, vec![0, 0, 30, 255, 255, 30]);
        let mut a = img(&[[1, 2, 3]]);
        invert(&mut a);
        assert_eq!(a.data, vec![254, 253, 252]);
    }

    #[test]
    fn enhance_factor_one_is_identity_and_zero_is_degenerate() {
        let base = img(&[[10, 200, 30], [250, 0, 128], [77, 77, 77]]);
        let mut s = Vec::new();
        for op in 0..3 {
            let mut a = base.clone();
            match op {
                0 => color(&mut a, 1.0),
                1 => contrast(&mut a, 1.0),
                _ => brightness(&mut a, 1.0),
            }
            assert_eq!(a, base);
        }
        let mut a = base.clone();
        color(&mut a, 0.0);
        assert!(a.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let mut a = base.clone();
        brightness(&mut a, 0.0);
        assert!(a.data.iter().all(|&v| v == 0));
        let mut a = base.clone();
        contrast(&mut a, 0.0);
        assert!(a.data.windows(2).all(|w| w[0] == w[1]));
        let mut big = RgbImage::new(5, 5);
        big.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 37 % 256) as u8);
        let orig = big.clone();
        sharpness(&mut big, 1.0, &mut s);
        assert_eq!(big, orig);
    }

    #[test]
    fn equalize_spreads_a_narrow_histogram() {
        let mut a = RgbImage::new(256, 4);
        for (i, p) in a.data.chunks_mut(3).enumerate() {
            p.fill(100 + (i % 16) as u8);
        }
        equalize(&mut a);
        let min = *a.data.iter().min().unwrap();
        let max = *a.data.iter().max().unwrap();
        assert!(min < 10 && max > 230, "{min} {max}");
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[0, 0, 0]), 0);
    }

    /// The row-wise sharpness equals the plain per-pixel evaluation (Pillow's definition) exactly.
    #[test]
    fn sharpness_equals_the_plain_evaluation() {
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[4]);
        let mut s = Vec::new();
        for (w, h) in [(3, 3), (17, 11), (64, 5)] {
            let mut base = RgbImage::new(w, h);
            base.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
            for f in [0.0f32, 0.1, 0.55, 1.0, 1.37, 1.9] {
                let mut want = base.clone();
                for y in 1..h - 1 {
                    for x in 1..w - 1 {
                        for c in 0..3 {
                            let at = |yy: usize, xx: usize| base.data[(yy * w + xx) * 3 + c] as u32;
                            let sum: u32 = (y - 1..=y + 1)
                                .flat_map(|yy| (x - 1..=x + 1).map(move |xx| (yy, xx)))
                                .map(|(yy, xx)| at(yy, xx))
                                .sum::<u32>()
                                + 4 * at(y, x);
                            let smooth = ((sum as f32 / 13.0) + 0.5).floor().min(255.0);
                            want.data[(y * w + x) * 3 + c] = blend_px(smooth, at(y, x) as u8, f);
                        }
                    }
                }
                let mut got = base.clone();
                sharpness(&mut got, f, &mut s);
                assert_eq!(got, want, "{w}x{h} f={f}");
            }
        }
    }

    /// The AVX2 twins (what the public functions run here, if the CPU has AVX2) and the baseline
    /// builds agree bit for bit.
    #[test]
    fn avx2_twins_equal_baseline_builds() {
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[22]);
        let mut base = RgbImage::new(45, 19);
        base.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
        let mut s = Vec::new();
        for f in [0.1f32, 0.77, 1.6] {
            let (mut a, mut b) = (base.clone(), base.clone());
            sharpness(&mut a, f, &mut s);
            sharpness_impl(&mut b, f, &mut s);
            assert_eq!(a, b);
            let (mut a, mut b) = (base.clone(), base.clone());
            color(&mut a, f);
            color_impl(&mut b, f);
            assert_eq!(a, b);
        }
    }
}
