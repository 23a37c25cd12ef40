//! Resampling a source region to the output size with PIL's antialiased filters (fast_image_resize).
//!
//! torchvision on PIL images resizes with Pillow's convolution resampler: a triangle (bilinear) or
//! a = -0.5 cubic (bicubic) kernel stretched by the downscale factor, so shrinking antialiases.
//! fast_image_resize implements the same separable convolution with SIMD and accepts a fractional
//! source crop box, which lets crop + resize be one pass with no intermediate image.

use crate::decode::RgbImage;
use crate::error::SampleError;
use crate::transforms::geometry::Region;
use fast_image_resize as fir;
use serde::{Deserialize, Serialize};

/// Resampling filter for resizing and RandAugment's geometric ops (PIL's filters), as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Triangle filter with antialiasing (PIL `BILINEAR`, torchvision's default).
    #[default]
    Bilinear,
    /// Cubic filter a = -0.5 with antialiasing (PIL `BICUBIC`, DeiT's choice).
    Bicubic,
    /// Train: bilinear or bicubic at random per image (timm's `random`); eval: bilinear.
    Random,
}

/// The two filters torchvision/timm use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// PIL `BILINEAR`.
    Bilinear,
    /// PIL `BICUBIC` (Catmull-Rom, a = -0.5).
    Bicubic,
}

/// A per-thread resampler (fast_image_resize keeps scratch buffers inside).
#[derive(Default)]
pub struct Resizer {
    inner: fir::Resizer,
}

impl std::fmt::Debug for Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resizer")
    }
}

impl Resizer {
    /// A new resampler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resample `region` of `src` into `out` (which keeps its `width x height`).
    pub fn resize_region(
        &mut self,
        src: &RgbImage,
        region: Region,
        filter: Filter,
        out: &mut RgbImage,
    ) -> Result<(), SampleError> {
        if src.width == 0 || src.height == 0 || out.width == 0 || out.height == 0 {
            return Err(SampleError::Resize("empty image".into()));
        }
        let fail = |e: &dyn std::fmt::Display| SampleError::Resize(e.to_string());
        let src_view = fir::images::ImageRef::new(
            src.width as u32,
            src.height as u32,
            src.pixels(),
            fir::PixelType::U8x3,
        )
        .map_err(|e| fail(&e))?;
        let (w, h) = (out.width as u32, out.height as u32);
        let needed = out.width * out.height * 3;
        let mut dst = fir::images::Image::from_slice_u8(w, h, &mut out.data[..needed], fir::PixelType::U8x3)
            .map_err(|e| fail(&e))?;
        let alg = fir::ResizeAlg::Convolution(match filter {
            Filter::Bilinear => fir::FilterType::Bilinear,
            Filter::Bicubic => fir::FilterType::CatmullRom,
        });
        let opts = fir::ResizeOptions::new().resize_alg(alg).crop(
            region.left,
            region.top,
            region.width,
            region.height,
        );
        self.inner.resize(&src_view, &mut dst, &opts).map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_stays_constant_and_gradient_keeps_its_mean() {
        let mut src = RgbImage::new(100, 60);
        for (i, p) in src.data.chunks_mut(3).enumerate() {
            let x = (i % 100) as u8;
            p.copy_from_slice(&[50, x * 2, 200]);
        }
        let mut r = Resizer::new();
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let mut out = RgbImage::new(25, 15);
            let region = Region { left: 0.0, top: 0.0, width: 100.0, height: 60.0 };
            r.resize_region(&src, region, filter, &mut out).unwrap();
            assert!(out.data.chunks(3).all(|p| p[0] == 50 && p[2] == 200));
            let mean: f64 = out.data.chunks(3).map(|p| p[1] as f64).sum::<f64>() / (25.0 * 15.0);
            assert!((mean - 99.0).abs() < 1.5, "{mean}");
            // A crop of the left half only sees the dark side.
            let region = Region { left: 0.0, top: 0.0, width: 50.0, height: 60.0 };
            r.resize_region(&src, region, filter, &mut out).unwrap();
            assert!(out.data.chunks(3).all(|p| p[1] < 102));
        }
    }

    #[test]
    fn matches_pillow_on_a_known_case() {
        // Pillow: Image.frombytes('L', (4, 1), bytes([0, 100, 200, 255])).resize((2, 1), BILINEAR)
        // gives [71, 209]: the triangle kernel stretched x2 weights inputs 0..3 by .75, .75, .25 (/1.75).
        let mut src = RgbImage::new(4, 1);
        for (p, v) in src.data.chunks_mut(3).zip([0u8, 100, 200, 255]) {
            p.fill(v);
        }
        let mut out = RgbImage::new(2, 1);
        let region = Region { left: 0.0, top: 0.0, width: 4.0, height: 1.0 };
        Resizer::new().resize_region(&src, region, Filter::Bilinear, &mut out).unwrap();
        let got: Vec<u8> = out.data.chunks(3).map(|p| p[0]).collect();
        assert!(got[0].abs_diff(71) <= 1 && got[1].abs_diff(209) <= 1, "{got:?}");
    }
}
