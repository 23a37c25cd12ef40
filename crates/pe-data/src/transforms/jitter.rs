//! torchvision's ColorJitter (brightness, contrast, saturation) on PIL semantics, in random order.
//!
//! timm passes a scalar `color_jitter` as (b, c, s) = (v, v, v) with no hue; each factor is drawn from
//! U(max(0, 1 - v), 1 + v) and the three ops run in a random permutation, as `ColorJitter.get_params`.

use crate::decode::RgbImage;
use crate::rng::Rng;
use crate::transforms::color;

/// Apply ColorJitter with strength `v` to `img`.
pub fn color_jitter(img: &mut RgbImage, v: f64, rng: &mut Rng) {
    let order = rng.permutation(3);
    let lo = (1.0 - v).max(0.0);
    let factors: [f32; 3] = std::array::from_fn(|_| rng.uniform(lo, 1.0 + v) as f32);
    for op in order {
        match op {
            0 => color::brightness(img, factors[0]),
            1 => color::contrast(img, factors[1]),
            _ => color::color(img, factors[2]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn zero_strength_is_identity_and_strength_changes_pixels() {
        let mut img = RgbImage::new(8, 8);
        img.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 5 % 250) as u8);
        let orig = img.clone();
        color_jitter(&mut img, 0.0, &mut Rng::keyed(Stream::Sample, &[1]));
        assert_eq!(img, orig);
        color_jitter(&mut img, 0.4, &mut Rng::keyed(Stream::Sample, &[1]));
        assert_ne!(img, orig);
    }
}
