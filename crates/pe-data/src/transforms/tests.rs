//! Pipeline-level tests of [`Transform`]: geometry, flip, grayscale, DCT scaling, determinism.

use super::*;
use crate::rng::Stream;

pub(crate) fn jpeg_of(img: &image::RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
    img.write_with_encoder(enc).unwrap();
    buf
}

fn smooth_photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        image::Rgb([(255.0 * fx) as u8, (255.0 * fy) as u8, (128.0 + 100.0 * (fx * 6.0).sin() * fy) as u8])
    })
}

fn cfg(img_size: usize) -> DataConfig {
    DataConfig { img_size, color_jitter: 0.0, decoder: DecoderKind::Zune, ..Default::default() }
}

fn run(t: &Transform, bytes: &[u8], key: u64) -> Vec<u8> {
    let mut out = vec![0u8; t.sample_len()];
    let mut s = Scratch::new(t.decoder);
    t.apply(bytes, &mut Rng::keyed(Stream::Sample, &[key]), &mut s, &mut out).unwrap();
    out
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.len() as f64
}

#[test]
fn eval_equals_resize_then_center_crop() {
    let photo = smooth_photo(120, 90);
    let bytes = jpeg_of(&photo);
    let t = Transform::eval(&cfg(56)).unwrap();
    let got = run(&t, &bytes, 0);
    // Reference: full resize to floor(56 / .875) = 64 on the short side (85 x 64), then crop 56.
    let mut decoded = RgbImage::default();
    Decoder::new(DecoderKind::Zune).decode_into(&bytes, 1, &mut decoded).unwrap();
    let (rw, rh) = geometry::resize_shorter(120, 90, 64);
    assert_eq!((rw, rh), (85, 64));
    let mut resized = RgbImage::new(rw, rh);
    let full = Region { left: 0.0, top: 0.0, width: 120.0, height: 90.0 };
    Resizer::new().resize_region(&decoded, full, Filter::Bilinear, &mut resized).unwrap();
    let b = geometry::center_crop(rw, rh, 56, 56);
    let mut want = vec![0u8; 3 * 56 * 56];
    for c in 0..3 {
        for y in 0..56 {
            for x in 0..56 {
                want[c * 56 * 56 + y * 56 + x] = resized.data[((b.top + y) * rw + b.left + x) * 3 + c];
            }
        }
    }
    // Same filter scale and centers; only the kernel's clipping at the crop edge may differ slightly.
    assert!(mean_abs_diff(&got, &want) < 0.5, "{}", mean_abs_diff(&got, &want));
}

#[test]
fn train_full_crop_and_flip() {
    // scale = [1, 1] and ratio = the image's own 4:3: the crop is the whole image, every time.
    let photo = smooth_photo(64, 48);
    let bytes = jpeg_of(&photo);
    let base = DataConfig { scale: [1.0, 1.0], ratio: [4.0 / 3.0, 4.0 / 3.0], ..cfg(32) };
    let no_flip = Transform::train(&DataConfig { hflip: 0.0, ..base.clone() }).unwrap();
    let flip = Transform::train(&DataConfig { hflip: 1.0, ..base }).unwrap();
    let a = run(&no_flip, &bytes, 1);
    let b = run(&flip, &bytes, 1);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(a[c * 1024 + y * 32 + x], b[c * 1024 + y * 32 + 31 - x]);
            }
        }
    }
    // Red grows left to right in the source: the unflipped output keeps that order.
    assert!(a[31] > a[0] + 100);
}

#[test]
fn train_is_deterministic_per_key_and_varies_across_keys() {
    let bytes = jpeg_of(&smooth_photo(100, 80));
    let c =
        DataConfig { auto_augment: Some("rand-m9-mstd0.5-inc1".parse().unwrap()), reprob: 0.25, ..cfg(40) };
    let t = Transform::train(&c).unwrap();
    assert_eq!(run(&t, &bytes, 7), run(&t, &bytes, 7));
    let distinct: std::collections::HashSet<Vec<u8>> = (0..10).map(|k| run(&t, &bytes, k)).collect();
    assert_eq!(distinct.len(), 10);
}

#[test]
fn grayscale_input_becomes_three_equal_channels() {
    let gray = image::GrayImage::from_fn(50, 40, |x, y| image::Luma([(x * 3 + y * 2) as u8]));
    let mut bytes = Vec::new();
    gray.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)).unwrap();
    for kind in [DecoderKind::Turbo, DecoderKind::Zune, DecoderKind::Image] {
        let t = Transform::eval(&DataConfig { decoder: kind, ..cfg(24) }).unwrap();
        let out = run(&t, &bytes, 0);
        let p = 24 * 24;
        assert_eq!(&out[..p], &out[p..2 * p]);
        assert_eq!(&out[..p], &out[2 * p..]);
    }
}

#[cfg(feature = "turbojpeg")]
#[test]
fn dct_scaled_decode_is_close_to_full_decode() {
    let bytes = jpeg_of(&smooth_photo(800, 600));
    let c = DataConfig { decoder: DecoderKind::Turbo, ..cfg(64) };
    let scaled = run(&Transform::eval(&c).unwrap(), &bytes, 0);
    let full = run(&Transform::eval(&DataConfig { dct_scaling: false, ..c }).unwrap(), &bytes, 0);
    let d = mean_abs_diff(&scaled, &full);
    assert!(d < 1.5, "{d}");
}

#[test]
fn colour_jitter_is_off_when_rand_augment_is_on() {
    let c = DataConfig { color_jitter: 0.4, auto_augment: Some("rand-m9".parse().unwrap()), ..cfg(8) };
    assert!(Transform::train(&c).unwrap().color_jitter.is_none());
    let c = DataConfig { color_jitter: 0.4, ..cfg(8) };
    assert_eq!(Transform::train(&c).unwrap().color_jitter, Some(0.4));
    assert!(Transform::eval(&c).unwrap().color_jitter.is_none());
}

#[test]
fn corrupt_bytes_are_an_error() {
    let t = Transform::train(&cfg(16)).unwrap();
    let mut out = vec![0u8; t.sample_len()];
    let mut s = Scratch::new(DecoderKind::default());
    let mut rng = Rng::keyed(Stream::Sample, &[0]);
    assert!(t.apply(b"GIF89a garbage", &mut rng, &mut s, &mut out).is_err());
    assert!(t.apply(&[], &mut rng, &mut s, &mut out).is_err());
}

/// The whole pipeline with window decoding equals it with whole-image decoding: train (bilinear and
/// bicubic, DCT-scaled or not), eval, on 4:2:0, 4:4:4 and grayscale files of odd sizes. The resampler's
/// weights are computed relative to the window's origin, so a weight can round differently in its last
/// bit; that moves a rare pixel by one level and nothing more.
#[cfg(feature = "turbojpeg")]
#[test]
fn window_decode_matches_whole_image_decode_through_the_pipeline() {
    use crate::decode::tests::{encode, textured};
    use turbojpeg::Subsamp;
    let mut files = Vec::new();
    for (i, (w, h)) in [(500, 375), (375, 500), (333, 251), (1031, 797)].into_iter().enumerate() {
        let px = textured(w, h, 100 + i as u64);
        for sub in [Subsamp::Sub2x2, Subsamp::None, Subsamp::Gray] {
            files.push(encode(&px, w, h, sub));
        }
    }
    let base = DataConfig { decoder: DecoderKind::Turbo, color_jitter: 0.0, ..Default::default() };
    let bicubic = DataConfig { interpolation: Interpolation::Bicubic, ..base.clone() };
    let small = DataConfig { img_size: 96, ..bicubic.clone() };
    let pipelines = [
        Transform::train(&base).unwrap(),
        Transform::train(&bicubic).unwrap(),
        Transform::train(&small).unwrap(),
        Transform::eval(&base).unwrap(),
        Transform::eval(&small).unwrap(),
    ];
    let (mut changed, mut total) = (0usize, 0usize);
    for t in pipelines {
        let whole = Transform { window_decode: false, ..t.clone() };
        for (i, bytes) in files.iter().enumerate() {
            for key in 0..6u64 {
                let k = (i as u64) << 8 | key;
                let (a, b) = (run(&t, bytes, k), run(&whole, bytes, k));
                let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
                assert!(max <= 1, "file {i} key {key}: {max}");
                changed += a.iter().zip(&b).filter(|(x, y)| x != y).count();
                total += a.len();
            }
        }
    }
    assert!((changed as f64) < 1e-3 * total as f64, "{changed} of {total} values differ");
}

#[test]
fn chw_copy_with_flip_mirrors_each_row() {
    // Widths below, at and across the 16-pixel blocks.
    for (w, h) in [(5, 3), (16, 2), (37, 4), (224, 3)] {
        let mut img = RgbImage::new(w, h);
        img.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 7 % 251) as u8);
        let n = 3 * w * h;
        let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
        hwc_to_chw(&img, &mut a);
        hwc_to_chw_flip(&img, &mut b, true);
        // The baseline build (the dispatch above may have run the AVX2 twin) gives the same bytes.
        let (mut a0, mut b0) = (vec![0u8; n], vec![0u8; n]);
        {
            let (r, rest) = a0.split_at_mut(w * h);
            let (g, bl) = rest.split_at_mut(w * h);
            planes(&img.data, w, r, g, bl, false);
            let (r, rest) = b0.split_at_mut(w * h);
            let (g, bl) = rest.split_at_mut(w * h);
            planes(&img.data, w, r, g, bl, true);
        }
        assert_eq!((&a0, &b0), (&a, &b));
        let p = w * h;
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(a[c * p + y * w + x], img.data[(y * w + x) * 3 + c]);
                    assert_eq!(b[c * p + y * w + x], a[c * p + y * w + w - 1 - x]);
                }
            }
        }
    }
}
