//! timm's RandAugment: the `rand-m9-mstd0.5-inc1` string, its op list and its magnitude mapping.
//!
//! Meaning of the string (timm `rand_augment_transform`): `m9` magnitude 9 of 10; `n` ops per image
//! (default 2, drawn with replacement); `p` probability that each drawn op is applied (default 0.5);
//! `mstd0.5` each applied op draws its magnitude from N(9, 0.5) clipped to [0, mmax=10] (`mstd` > 100
//! means uniform in [0, m]); `inc1` selects the "increasing" op variants, whose severity grows with the
//! magnitude. Affine ops fill with the mean colour and resample with the configured interpolation
//! (random bilinear/bicubic per op when it is `random`), translations are relative (45 % of the side
//! at magnitude 10). Ops work on the RandomResizedCrop output, like timm's secondary transforms.

use crate::decode::RgbImage;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::transforms::affine;
use crate::transforms::color;
use crate::transforms::resize::{Filter, Interpolation};
use serde::{Deserialize, Serialize};

/// The ops RandAugment chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `ImageOps.autocontrast`.
    AutoContrast,
    /// `ImageOps.equalize`.
    Equalize,
    /// `ImageOps.invert`.
    Invert,
    /// Rotate by ±30° · m/10.
    Rotate,
    /// Keep `int(m/10 · 4)` bits (decreasing severity).
    Posterize,
    /// Keep `4 - int(m/10 · 4)` bits.
    PosterizeIncreasing,
    /// Threshold `int(m/10 · 256)`.
    Solarize,
    /// Threshold `256 - int(m/10 · 256)`.
    SolarizeIncreasing,
    /// Add `int(m/10 · 110)` below 128.
    SolarizeAdd,
    /// Saturation factor `m/10 · 1.8 + 0.1`.
    Color,
    /// Saturation factor `max(0.1, 1 ± m/10 · 0.9)`.
    ColorIncreasing,
    /// Contrast, as `Color`.
    Contrast,
    /// Contrast, as `ColorIncreasing`.
    ContrastIncreasing,
    /// Brightness, as `Color`.
    Brightness,
    /// Brightness, as `ColorIncreasing`.
    BrightnessIncreasing,
    /// Sharpness, as `Color`.
    Sharpness,
    /// Sharpness, as `ColorIncreasing`.
    SharpnessIncreasing,
    /// Shear factor ±0.3 · m/10.
    ShearX,
    /// Shear factor ±0.3 · m/10.
    ShearY,
    /// Translate ±0.45 · m/10 of the width.
    TranslateXRel,
    /// Translate ±0.45 · m/10 of the height.
    TranslateYRel,
}

/// timm `_RAND_TRANSFORMS`.
pub const RAND_TRANSFORMS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

/// timm `_RAND_INCREASING_TRANSFORMS` (`inc1`).
pub const RAND_INCREASING_TRANSFORMS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::PosterizeIncreasing,
    Op::SolarizeIncreasing,
    Op::SolarizeAdd,
    Op::ColorIncreasing,
    Op::ContrastIncreasing,
    Op::BrightnessIncreasing,
    Op::SharpnessIncreasing,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

/// Magnitudes are on a 0..10 scale (timm `_LEVEL_DENOM`).
const LEVEL_DENOM: f64 = 10.0;

/// A parsed timm RandAugment string: the policy, independent of the image settings. Reads and
/// writes as the string it was parsed from, so configs round-trip unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RandAugmentSpec {
    text: String,
    /// Ops to choose from.
    pub ops: Vec<Op>,
    /// Ops applied per image (`n`).
    pub num_layers: usize,
    /// Magnitude (`m`).
    pub magnitude: f64,
    /// Magnitude noise std (`mstd`); infinite = uniform in [0, m].
    pub magnitude_std: f64,
    /// Upper clip of the magnitude (`mmax`, default 10).
    pub magnitude_max: f64,
    /// Probability each drawn op is applied (`p`).
    pub prob: f64,
}

impl RandAugmentSpec {
    /// DeiT's policy, `rand-m9-mstd0.5-inc1`.
    pub fn deit() -> Self {
        "rand-m9-mstd0.5-inc1".parse().expect("DeiT's RandAugment string parses")
    }
}

impl std::str::FromStr for RandAugmentSpec {
    type Err = Error;

    /// Parse a timm RandAugment string (`rand-m9-n2-mstd0.5-mmax10-inc1-p0.5`).
    fn from_str(spec: &str) -> Result<Self> {
        let bad = |what: &str| Error::Config(format!("auto_augment = {spec:?}: {what}"));
        let mut parts = spec.split('-');
        if parts.next() != Some("rand") {
            return Err(bad("only RandAugment strings ('rand-...') are supported"));
        }
        let mut ra = RandAugmentSpec {
            text: spec.to_owned(),
            ops: RAND_TRANSFORMS.to_vec(),
            num_layers: 2,
            magnitude: LEVEL_DENOM,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            prob: 0.5,
        };
        for part in parts {
            let split =
                part.find(|c: char| c.is_ascii_digit()).ok_or_else(|| bad(&format!("section {part:?}")))?;
            let (key, val) = part.split_at(split);
            let num: f64 = val.parse().map_err(|_| bad(&format!("section {part:?}: bad number")))?;
            match key {
                "m" => ra.magnitude = num,
                "n" => ra.num_layers = num as usize,
                "p" => ra.prob = num,
                "mstd" => ra.magnitude_std = if num > 100.0 { f64::INFINITY } else { num },
                "mmax" => ra.magnitude_max = num,
                "inc" => {
                    ra.ops = if num != 0.0 {
                        RAND_INCREASING_TRANSFORMS.to_vec()
                    } else {
                        RAND_TRANSFORMS.to_vec()
                    }
                }
                _ => return Err(bad(&format!("unknown section {part:?}"))),
            }
        }
        if !(0.0..=1.0).contains(&ra.prob) {
            return Err(bad("p must be in [0, 1]"));
        }
        Ok(ra)
    }
}

impl TryFrom<String> for RandAugmentSpec {
    type Error = Error;

    fn try_from(spec: String) -> Result<Self> {
        spec.parse()
    }
}

impl From<RandAugmentSpec> for String {
    fn from(spec: RandAugmentSpec) -> String {
        spec.text
    }
}

/// A RandAugment policy with the image settings its affine ops need.
#[derive(Clone, Debug, PartialEq)]
pub struct RandAugment {
    /// What to apply.
    pub policy: RandAugmentSpec,
    /// Fill colour for affine ops.
    pub fill: [u8; 3],
    /// Resampling for affine ops (`Random`: per op).
    pub interpolation: Interpolation,
}

impl RandAugment {
    /// Apply to `img` (in place; `tmp` and `scratch` are reusable buffers).
    pub fn apply(&self, img: &mut RgbImage, rng: &mut Rng, tmp: &mut RgbImage, scratch: &mut Vec<u8>) {
        let mut flip = false;
        self.apply_after_flip(img, &mut flip, rng, tmp, scratch);
    }

    /// Apply to `img` as if it had been mirrored first when `*flip` is set. Every op but the
    /// geometric ones commutes with a horizontal mirror exactly (LUTs, per-pixel blends, whole-image
    /// statistics and the symmetric sharpening kernel), so the mirror is only carried out, and `*flip`
    /// cleared, before a rotate, shear or translate; otherwise the caller can still fold it into its
    /// final copy. Same output as flipping first, one full pass over the image less.
    pub fn apply_after_flip(
        &self,
        img: &mut RgbImage,
        flip: &mut bool,
        rng: &mut Rng,
        tmp: &mut RgbImage,
        scratch: &mut Vec<u8>,
    ) {
        let p = &self.policy;
        for _ in 0..p.num_layers {
            let op = p.ops[rng.below(p.ops.len() as u64) as usize];
            if p.prob < 1.0 && rng.f64() > p.prob {
                continue;
            }
            let mut m = p.magnitude;
            if p.magnitude_std == f64::INFINITY {
                m = rng.uniform(0.0, m);
            } else if p.magnitude_std > 0.0 {
                m = rng.gauss(m, p.magnitude_std);
            }
            let m = m.clamp(0.0, p.magnitude_max);
            let geometric =
                matches!(op, Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateXRel | Op::TranslateYRel);
            if geometric && *flip {
                crate::transforms::flip_horizontal(img);
                *flip = false;
            }
            self.apply_op(op, m, img, rng, tmp, scratch);
        }
    }

    fn filter(&self, rng: &mut Rng) -> Filter {
        match self.interpolation {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
            Interpolation::Random => {
                if rng.bernoulli(0.5) {
                    Filter::Bilinear
                } else {
                    Filter::Bicubic
                }
            }
        }
    }

    /// Apply one op at magnitude `m` (0..=mmax).
    pub fn apply_op(
        &self,
        op: Op,
        m: f64,
        img: &mut RgbImage,
        rng: &mut Rng,
        tmp: &mut RgbImage,
        scratch: &mut Vec<u8>,
    ) {
        let level = m / LEVEL_DENOM;
        // timm `_randomly_negate`: negate when random() > 0.5.
        let negate = |rng: &mut Rng, v: f64| if rng.f64() > 0.5 { -v } else { v };
        let enhance = level * 1.8 + 0.1;
        let enhance_inc = |rng: &mut Rng| (1.0 + negate(rng, level * 0.9)).max(0.1);
        let (w, h) = (img.width, img.height);
        let mut warp = |img: &mut RgbImage, rng: &mut Rng, a: affine::Affine| {
            let filter = self.filter(rng);
            affine::warp(img, &a, filter, self.fill, tmp);
            std::mem::swap(img, tmp);
        };
        match op {
            Op::AutoContrast => color::autocontrast(img),
            Op::Equalize => color::equalize(img),
            Op::Invert => color::invert(img),
            Op::Rotate => {
                let deg = negate(rng, level * 30.0);
                warp(img, rng, affine::rotation(w, h, deg));
            }
            Op::Posterize => color::posterize(img, (level * 4.0) as u32),
            Op::PosterizeIncreasing => color::posterize(img, 4 - (level * 4.0) as u32),
            Op::Solarize => color::solarize(img, ((level * 256.0) as u32).min(256)),
            Op::SolarizeIncreasing => color::solarize(img, 256 - ((level * 256.0) as u32).min(256)),
            Op::SolarizeAdd => color::solarize_add(img, ((level * 110.0) as u32).min(128), 128),
            Op::Color => color::color(img, enhance as f32),
            Op::ColorIncreasing => color::color(img, enhance_inc(rng) as f32),
            Op::Contrast => color::contrast(img, enhance as f32),
            Op::ContrastIncreasing => color::contrast(img, enhance_inc(rng) as f32),
            Op::Brightness => color::brightness(img, enhance as f32),
            Op::BrightnessIncreasing => color::brightness(img, enhance_inc(rng) as f32),
            Op::Sharpness => color::sharpness(img, enhance as f32, scratch),
            Op::SharpnessIncreasing => color::sharpness(img, enhance_inc(rng) as f32, scratch),
            Op::ShearX => {
                let f = negate(rng, level * 0.3);
                warp(img, rng, [1.0, f, 0.0, 0.0, 1.0, 0.0]);
            }
            Op::ShearY => {
                let f = negate(rng, level * 0.3);
                warp(img, rng, [1.0, 0.0, 0.0, f, 1.0, 0.0]);
            }
            Op::TranslateXRel => {
                let px = negate(rng, level * 0.45) * w as f64;
                warp(img, rng, [1.0, 0.0, px, 0.0, 1.0, 0.0]);
            }
            Op::TranslateYRel => {
                let px = negate(rng, level * 0.45) * h as f64;
                warp(img, rng, [1.0, 0.0, 0.0, 0.0, 1.0, px]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    /// `spec` with the default config's fill colour (the ImageNet mean) and bilinear resampling.
    fn rand_augment(spec: &str) -> RandAugment {
        RandAugment {
            policy: spec.parse().unwrap(),
            fill: [124, 116, 104],
            interpolation: Interpolation::Bilinear,
        }
    }

    #[test]
    fn parses_deits_string_like_timm() {
        let ra: RandAugmentSpec = "rand-m9-mstd0.5-inc1".parse().unwrap();
        assert_eq!(ra.ops, RAND_INCREASING_TRANSFORMS.to_vec());
        assert_eq!(
            (ra.num_layers, ra.magnitude, ra.magnitude_std, ra.magnitude_max, ra.prob),
            (2, 9.0, 0.5, 10.0, 0.5)
        );
        assert_eq!(String::from(ra), "rand-m9-mstd0.5-inc1");
        let ra: RandAugmentSpec = "rand-m7-n3-mstd101-p0.7".parse().unwrap();
        assert_eq!(ra.ops, RAND_TRANSFORMS.to_vec());
        assert_eq!((ra.num_layers, ra.magnitude, ra.prob), (3, 7.0, 0.7));
        assert!(ra.magnitude_std.is_infinite());
        for bad in ["original-mstd0.5", "rand-x9", "rand-mfoo", "rand-p1.5"] {
            assert!(bad.parse::<RandAugmentSpec>().is_err(), "{bad}");
        }
    }

    fn photo() -> RgbImage {
        let mut img = RgbImage::new(32, 24);
        for (i, p) in img.data.chunks_mut(3).enumerate() {
            let (x, y) = (i % 32, i / 32);
            p.copy_from_slice(&[(x * 8) as u8, (y * 10) as u8, ((x + y) * 4) as u8]);
        }
        img
    }

    #[test]
    fn magnitude_mapping_matches_timm_at_m9() {
        // At m = 9: PosterizeIncreasing keeps 4 - int(3.6) = 1 bit; SolarizeIncreasing threshold
        // 256 - int(230.4) = 26; SolarizeAdd adds int(99) = 99.
        let ra = rand_augment("rand-m9-inc1");
        let mut rng = Rng::keyed(Stream::Sample, &[0]);
        let (mut tmp, mut s) = (RgbImage::default(), Vec::new());
        let mut img = photo();
        ra.apply_op(Op::PosterizeIncreasing, 9.0, &mut img, &mut rng, &mut tmp, &mut s);
        assert!(img.data.iter().all(|&v| v == 0 || v == 128));
        let mut img = photo();
        let orig = img.clone();
        ra.apply_op(Op::SolarizeIncreasing, 9.0, &mut img, &mut rng, &mut tmp, &mut s);
        for (a, b) in img.data.iter().zip(&orig.data) {
            assert_eq!(*a, if *b >= 26 { 255 - b } else { *b });
        }
        let mut img = photo();
        ra.apply_op(Op::SolarizeAdd, 9.0, &mut img, &mut rng, &mut tmp, &mut s);
        for (a, b) in img.data.iter().zip(&orig.data) {
            assert_eq!(*a, if *b < 128 { (*b as u32 + 99).min(255) as u8 } else { *b });
        }
        // Magnitude 0 of the geometric ops is the identity.
        for op in [Op::Rotate, Op::ShearX, Op::ShearY, Op::TranslateXRel, Op::TranslateYRel] {
            let mut img = photo();
            ra.apply_op(op, 0.0, &mut img, &mut rng, &mut tmp, &mut s);
            assert_eq!(img, orig, "{op:?}");
        }
        // Translating by 45 % moves content and exposes the fill colour.
        let mut img = photo();
        ra.apply_op(Op::TranslateXRel, 10.0, &mut img, &mut rng, &mut tmp, &mut s);
        assert!(img.data.chunks(3).filter(|p| *p == [124, 116, 104]).count() >= 14 * 24);
    }

    #[test]
    fn prob_zero_is_identity_and_full_policy_changes_images() {
        let (mut tmp, mut s) = (RgbImage::default(), Vec::new());
        let ra = rand_augment("rand-m9-p0");
        let mut rng = Rng::keyed(Stream::Sample, &[0]);
        let mut img = photo();
        ra.apply(&mut img, &mut rng, &mut tmp, &mut s);
        assert_eq!(img, photo());
        let ra = rand_augment("rand-m9-mstd0.5-inc1");
        let changed = (0..50)
            .filter(|&i| {
                let mut img = photo();
                ra.apply(&mut img, &mut Rng::keyed(Stream::Sample, &[i]), &mut tmp, &mut s);
                img != photo()
            })
            .count();
        // P(no op applied) = 0.25, plus a few no-op draws: most images change.
        assert!((25..50).contains(&changed), "{changed}");
    }

    /// Deferring the flip past the colour ops gives exactly what flipping first gives, for every op.
    #[test]
    fn deferred_flip_equals_flipping_first() {
        let (mut tmp, mut s) = (RgbImage::default(), Vec::new());
        let ra = rand_augment("rand-m9-mstd0.5-inc1-n3-p0.9");
        let mut src = RgbImage::new(29, 23);
        let mut rng = Rng::keyed(Stream::Sample, &[3]);
        src.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
        for key in 0..300 {
            let mut want = src.clone();
            crate::transforms::flip_horizontal(&mut want);
            ra.apply(&mut want, &mut Rng::keyed(Stream::Sample, &[key]), &mut tmp, &mut s);
            let mut got = src.clone();
            let mut flip = true;
            ra.apply_after_flip(
                &mut got,
                &mut flip,
                &mut Rng::keyed(Stream::Sample, &[key]),
                &mut tmp,
                &mut s,
            );
            if flip {
                crate::transforms::flip_horizontal(&mut got);
            }
            assert_eq!(got, want, "key {key}");
        }
        // Each single op too, at a fixed magnitude.
        for op in RAND_INCREASING_TRANSFORMS.iter().chain(&RAND_TRANSFORMS) {
            let mut want = src.clone();
            crate::transforms::flip_horizontal(&mut want);
            ra.apply_op(*op, 7.0, &mut want, &mut Rng::keyed(Stream::Sample, &[1]), &mut tmp, &mut s);
            let mut got = src.clone();
            ra.apply_op(*op, 7.0, &mut got, &mut Rng::keyed(Stream::Sample, &[1]), &mut tmp, &mut s);
            crate::transforms::flip_horizontal(&mut got);
            // (Geometric ops need not commute; apply_after_flip never defers past them.)
            let geometric =
                matches!(op, Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateXRel | Op::TranslateYRel);
            // (Geometric ops need not commute; apply_after_flip never defers past them.)
            assert!(geometric || got == want, "{op:?}");
        }
    }
}
