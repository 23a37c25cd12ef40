//! Per-sample transforms: the train (RandomResizedCrop → flip → RandAugment/ColorJitter → erasing) and
//! eval (resize shorter side → center crop) pipelines, writing uint8 CHW straight into a batch slot.
//!
//! The geometry is decided from the JPEG header before any pixel is decoded, so the decoder can use
//! DCT scaling and crop + resize is one resampling pass over the decoded pixels.

pub mod affine;
pub mod color;
pub mod erasing;
pub mod geometry;
pub mod jitter;
pub mod rand_augment;
pub mod resize;

/// Call `$f($args)` compiled for AVX2 (through the `#[target_feature]` twin `$f_avx2`) when the CPU
/// has it, else the baseline build. Why: the workspace builds for baseline x86-64 (SSE2), where the
/// compiler cannot use byte shuffles or 256-bit lanes, and the pixel loops of the transforms are
/// written so that it vectorises them given those. The twins are the same Rust code; Rust never
/// contracts float multiply-adds, so the results are bit-identical either way.
macro_rules! avx2_dispatch {
    ($f:ident, $f_avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                #[allow(unsafe_code)]
                // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of the call.
                return unsafe { $f_avx2($($arg),*) };
            }
        }
        $f($($arg),*)
    }};
}
pub(crate) use avx2_dispatch;

use crate::config::DataConfig;
use crate::decode::{scale_denominator, scaled_dim, Decoder, DecoderKind, RgbImage, Window};
use crate::error::{Result, SampleError};
use crate::rng::Rng;
use erasing::RandomErasing;
use geometry::Region;
use rand_augment::RandAugment;
use resize::{Filter, Interpolation, Resizer};

/// Train or eval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Random augmentation.
    Train,
    /// Deterministic resize + center crop.
    Eval,
}

/// A configured per-sample pipeline. Cheap to share between threads (`&self` only).
#[derive(Clone, Debug)]
pub struct Transform {
    /// Train or eval.
    pub mode: Mode,
    /// Output side.
    pub img_size: usize,
    /// Eval crop fraction.
    pub crop_pct: f64,
    /// RRC area range.
    pub scale: [f64; 2],
    /// RRC aspect range.
    pub ratio: [f64; 2],
    /// Flip probability.
    pub hflip: f64,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// ColorJitter strength (train, only without RandAugment, as timm).
    pub color_jitter: Option<f64>,
    /// RandAugment policy (train).
    pub rand_augment: Option<RandAugment>,
    /// Random erasing (train).
    pub erasing: Option<RandomErasing>,
    /// JPEG decoder.
    pub decoder: DecoderKind,
    /// Allow DCT-domain downscaling.
    pub dct_scaling: bool,
    /// Decode only the window the crop reads (libjpeg-turbo). Always on in the pipelines; off only to
    /// compare against whole-image decoding in tests and benchmarks, as the output is the same.
    pub window_decode: bool,
}

/// Per-thread reusable buffers: decoder handle, decoded and resized images, resampler.
#[derive(Debug)]
pub struct Scratch {
    decoder: Decoder,
    decoded: RgbImage,
    resized: RgbImage,
    tmp: RgbImage,
    buf: Vec<u8>,
    resizer: Resizer,
}

impl Scratch {
    /// Buffers for a decoder of `kind`.
    pub fn new(kind: DecoderKind) -> Self {
        Scratch {
            decoder: Decoder::new(kind),
            decoded: RgbImage::default(),
            resized: RgbImage::default(),
            tmp: RgbImage::default(),
            buf: Vec::new(),
            resizer: Resizer::new(),
        }
    }

    /// The decoder kind in use (after fallbacks).
    pub fn decoder_kind(&self) -> DecoderKind {
        self.decoder.kind()
    }
}

impl Transform {
    /// The train pipeline of `cfg`.
    pub fn train(cfg: &DataConfig) -> Result<Self> {
        cfg.validate()?;
        let rand_augment = cfg.auto_augment.clone().map(|policy| RandAugment {
            policy,
            fill: cfg.mean_pixel(),
            interpolation: cfg.interpolation,
        });
        let color_jitter = (cfg.color_jitter > 0.0 && rand_augment.is_none()).then_some(cfg.color_jitter);
        let erasing = (cfg.reprob > 0.0)
            .then(|| RandomErasing::new(cfg.reprob, cfg.remode, cfg.recount, cfg.mean, cfg.std));
        Ok(Transform { mode: Mode::Train, rand_augment, color_jitter, erasing, ..Self::eval(cfg)? })
    }

    /// The eval pipeline of `cfg`.
    pub fn eval(cfg: &DataConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Transform {
            mode: Mode::Eval,
            img_size: cfg.img_size,
            crop_pct: cfg.crop_pct,
            scale: cfg.scale,
            ratio: cfg.ratio,
            hflip: cfg.hflip,
            interpolation: cfg.interpolation,
            color_jitter: None,
            rand_augment: None,
            erasing: None,
            decoder: cfg.decoder,
            dct_scaling: cfg.dct_scaling,
            window_decode: true,
        })
    }

    /// Bytes of one output sample (`3 * img_size * img_size`).
    pub fn sample_len(&self) -> usize {
        3 * self.img_size * self.img_size
    }

    fn filter(&self, rng: &mut Rng) -> Filter {
        match (self.interpolation, self.mode) {
            (Interpolation::Bicubic, _) => Filter::Bicubic,
            (Interpolation::Random, Mode::Train) if rng.bernoulli(0.5) => Filter::Bicubic,
            _ => Filter::Bilinear,
        }
    }

    /// Decode `bytes`, transform, and write `3 x img_size x img_size` uint8 into `out`.
    /// On error the caller attaches the path and treats the file as bad.
    pub fn apply(
        &self,
        bytes: &[u8],
        rng: &mut Rng,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> Result<(), SampleError> {
        let size = self.img_size;
        if out.len() != self.sample_len() {
            return Err(SampleError::SlotSize { got: out.len(), expected: self.sample_len() });
        }
        let header = s.decoder.header(bytes)?;
        if header.width == 0 || header.height == 0 {
            return Err(SampleError::ZeroSize);
        }
        let region: Region = match self.mode {
            Mode::Train => {
                geometry::random_resized_crop(header.width, header.height, self.scale, self.ratio, rng).into()
            }
            Mode::Eval => geometry::eval_region(header.width, header.height, size, self.crop_pct),
        };
        let filter = self.filter(rng);
        let denom =
            if self.dct_scaling { scale_denominator(region.width, region.height, size, size) } else { 1 };
        // The region in pixels of the image at 1/denom scale, and the window of those pixels that
        // resampling it reads: libjpeg-turbo decodes only that window.
        let (fw, fh) = (scaled_dim(header.width, denom), scaled_dim(header.height, denom));
        let want = scale_region(region, header.width, header.height, fw, fh);
        let window = needed_window(want, size, size, filter, fw, fh);
        let window = self.window_decode.then_some(window);
        let got = s.decoder.decode_window_into(bytes, denom, window, &mut s.decoded)?;
        if got.denom == 1 && (got.full_width, got.full_height) != (header.width, header.height) {
            return Err(SampleError::SizeMismatch {
                header: (header.width, header.height),
                decoded: (got.full_width, got.full_height),
            });
        }
        // Map the region into the decoded window (the decoder may have scaled differently or decoded
        // the whole image).
        let region = scale_region(region, header.width, header.height, got.full_width, got.full_height);
        let (wx, wy) = (got.window.x0 as f64, got.window.y0 as f64);
        let (left, top) = ((region.left - wx).max(0.0), (region.top - wy).max(0.0));
        let region = Region {
            left,
            top,
            width: region.width.min(s.decoded.width as f64 - left),
            height: region.height.min(s.decoded.height as f64 - top),
        };
        s.resized.reshape(size, size);
        s.resizer.resize_region(&s.decoded, region, filter, &mut s.resized)?;
        // The flip is folded into the final HWC -> CHW copy; colour ops commute with it, and
        // RandAugment carries it out itself before a geometric op.
        let mut flip = false;
        if self.mode == Mode::Train {
            flip = rng.f64() < self.hflip;
            if let Some(ra) = &self.rand_augment {
                ra.apply_after_flip(&mut s.resized, &mut flip, rng, &mut s.tmp, &mut s.buf);
            } else if let Some(v) = self.color_jitter {
                jitter::color_jitter(&mut s.resized, v, rng);
            }
        }
        hwc_to_chw_flip(&s.resized, out, flip);
        if let Some(re) = &self.erasing {
            re.apply(out, size, size, rng);
        }
        Ok(())
    }
}

/// `region` (pixels of a `width x height` image) in pixels of the same image decoded at `fw x fh`,
/// clamped to it.
fn scale_region(region: Region, width: usize, height: usize, fw: usize, fh: usize) -> Region {
    let (sx, sy) = (fw as f64 / width as f64, fh as f64 / height as f64);
    Region {
        left: region.left * sx,
        top: region.top * sy,
        width: (region.width * sx).min(fw as f64),
        height: (region.height * sy).min(fh as f64),
    }
}

/// Extra pixels decoded around what the resampler reads. libjpeg-turbo treats a cropped window's edges
/// like image edges when it upsamples chroma (4:2:0 reaches one chroma sample, two pixels, across), so
/// the pixels next to a cut differ from a whole-image decode; the pad keeps those out of reach.
const WINDOW_PAD: usize = 4;

/// The window of an `fw x fh` image that resampling `region` to `out_w x out_h` with `filter` reads:
/// the region widened by the filter's reach (its support, stretched by the downscale factor as the
/// antialiasing resampler does), plus [`WINDOW_PAD`], clamped to the image. Outside it no output pixel
/// has a tap, so decoding only the window gives the same output as decoding everything.
fn needed_window(region: Region, out_w: usize, out_h: usize, filter: Filter, fw: usize, fh: usize) -> Window {
    let support = match filter {
        Filter::Bilinear => 1.0,
        Filter::Bicubic => 2.0,
    };
    let reach = |len: f64, out: usize| support * (len / out as f64).max(1.0);
    let (rx, ry) = (reach(region.width, out_w), reach(region.height, out_h));
    let lo = |v: f64| (v.floor().max(0.0) as usize).saturating_sub(WINDOW_PAD);
    let hi = |v: f64, max: usize| ((v.ceil().max(0.0) as usize) + WINDOW_PAD).min(max);
    Window {
        x0: lo(region.left - rx).min(fw.saturating_sub(1)),
        y0: lo(region.top - ry).min(fh.saturating_sub(1)),
        x1: hi(region.left + region.width + rx, fw),
        y1: hi(region.top + region.height + ry, fh),
    }
}

/// Mirror each row in place.
pub fn flip_horizontal(img: &mut RgbImage) {
    let w = img.width;
    let n = img.width * img.height * 3;
    for row in img.data[..n].chunks_exact_mut(w * 3) {
        for x in 0..w / 2 {
            let (a, b) = (x * 3, (w - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Packed HWC → planar CHW.
pub fn hwc_to_chw(img: &RgbImage, out: &mut [u8]) {
    hwc_to_chw_flip(img, out, false);
}

/// Packed HWC → planar CHW, mirrored left-right when `flip` is set. Row by row with the three output
/// rows as slices, so the loop carries no bounds checks; the mirror costs nothing here.
pub fn hwc_to_chw_flip(img: &RgbImage, out: &mut [u8], flip: bool) {
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return;
    }
    let plane = w * h;
    let (r, rest) = out[..3 * plane].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    avx2_dispatch!(planes, planes_avx2, img.pixels(), w, r, g, b, flip)
}

/// The body of [`hwc_to_chw_flip`]. Baseline x86-64 (SSE2) has no byte shuffle, so the compiler
/// leaves this stride-3 deinterleave scalar (~7 % of the eval pipeline); compiled for AVX2 it
/// becomes shuffles. Plain Rust either way, same result.
#[inline(always)]
fn planes(src: &[u8], w: usize, r: &mut [u8], g: &mut [u8], b: &mut [u8], flip: bool) {
    for (((src, r), g), b) in src
        .chunks_exact(w * 3)
        .zip(r.chunks_exact_mut(w))
        .zip(g.chunks_exact_mut(w))
        .zip(b.chunks_exact_mut(w))
    {
        let px = src.chunks_exact(3);
        let dst = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
        if flip {
            for (((r, g), b), p) in dst.zip(px.rev()) {
                (*r, *g, *b) = (p[0], p[1], p[2]);
            }
        } else {
            for (((r, g), b), p) in dst.zip(px) {
                (*r, *g, *b) = (p[0], p[1], p[2]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn planes_avx2(src: &[u8], w: usize, r: &mut [u8], g: &mut [u8], b: &mut [u8], flip: bool) {
    planes(src, w, r, g, b, flip)
}

#[cfg(test)]
mod tests;
