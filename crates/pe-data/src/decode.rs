//! Image decoding to packed RGB: format sniffing, header-only probing and three JPEG decoders.
//!
//! Why three: the decoder is the pipeline's hot spot, so `examples/decode_bench.rs` measures `image`'s
//! decoder, zune-jpeg called directly and libjpeg-turbo (`turbojpeg` feature). libjpeg-turbo wins and can
//! also decode at 1/2, 1/4 or 1/8 scale in the DCT domain, which RandomResizedCrop and the eval resize
//! use whenever the crop is at least twice the output size (see [`scale_denominator`]), and can decode
//! just the window a crop reads ([`Decoder::decode_window_into`], via `turbo.rs`). The others stay
//! as fallbacks: whatever libjpeg-turbo refuses (CMYK, odd markers) is retried with zune-jpeg through
//! `image`, and non-JPEG files (PNG, GIF, BMP, WebP) go through `image`. Grayscale and palette inputs
//! always come out as 3-channel RGB.

use crate::error::SampleError;
use std::io::Cursor;

#[cfg(feature = "turbojpeg")]
mod turbo;

/// A pixel window `[x0, x1) x [y0, y1)` of the (scaled) image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First column.
    pub x0: usize,
    /// First row.
    pub y0: usize,
    /// One past the last column.
    pub x1: usize,
    /// One past the last row.
    pub y1: usize,
}

/// What [`Decoder::decode_window_into`] produced: the scale applied and where the decoded pixels sit
/// in the full image at that scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// DCT scaling denominator actually applied (1 unless libjpeg-turbo decoded).
    pub denom: usize,
    /// The window of the scaled image that the output holds (the whole image unless cropped).
    pub window: Window,
    /// Width of the whole image at this scale.
    pub full_width: usize,
    /// Height of the whole image at this scale.
    pub full_height: usize,
}

/// A dimension at DCT scale `1 / denom`, rounded up as libjpeg-turbo does (`TJSCALED`).
pub fn scaled_dim(dim: usize, denom: usize) -> usize {
    dim.div_ceil(denom.max(1))
}

/// A decoded image: packed RGB, row-major (`[height, width, 3]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes; may be longer when reused as scratch (only the prefix is valid).
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image of the given size filled with zeros.
    pub fn new(width: usize, height: usize) -> Self {
        RgbImage { width, height, data: vec![0; width * height * 3] }
    }

    /// Resize the logical image, reusing the allocation; contents are unspecified.
    pub fn reshape(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
        self.data.resize(width * height * 3, 0);
    }

    /// The valid pixel bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.data[..self.width * self.height * 3]
    }
}

/// The container format, from the file's magic bytes (never from its extension: ImageNet has PNGs
/// named `.JPEG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG.
    Png,
    /// Anything else `image` may still read (GIF, BMP, WebP).
    Other,
}

/// Detect the format from the first bytes.
pub fn sniff(bytes: &[u8]) -> Format {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Format::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else {
        Format::Other
    }
}

/// Which JPEG decoder to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// libjpeg-turbo via the `turbojpeg` crate (needs the `turbojpeg` feature); supports DCT scaling.
    Turbo,
    /// zune-jpeg called directly.
    Zune,
    /// The `image` crate's generic `load_from_memory` path.
    Image,
}

impl Default for DecoderKind {
    fn default() -> Self {
        if cfg!(feature = "turbojpeg") {
            DecoderKind::Turbo
        } else {
            DecoderKind::Zune
        }
    }
}

/// Image dimensions read from the header without decoding pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Container format.
    pub format: Format,
}

/// The DCT scaling denominator (1, 2, 4 or 8) for decoding a `crop_w x crop_h` region that will be
/// resized to `out_w x out_h`: the largest one that keeps the scaled crop at least as large as the
/// output in both axes, so the final resize still only shrinks (and still antialiases). For a typical
/// ImageNet photo and 224 px output this is usually 1; it pays off on large photos and small outputs.
pub fn scale_denominator(crop_w: f64, crop_h: f64, out_w: usize, out_h: usize) -> usize {
    let mut d = 1;
    while d < 8 && crop_w / ((2 * d) as f64) >= out_w as f64 && crop_h / ((2 * d) as f64) >= out_h as f64 {
        d *= 2;
    }
    d
}

/// A reusable decoder (one per worker thread: it holds libjpeg-turbo's handle).
pub struct Decoder {
    kind: DecoderKind,
    #[cfg(feature = "turbojpeg")]
    turbo: Option<turbo::Turbo>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("kind", &self.kind).finish()
    }
}

impl Decoder {
    /// A decoder of the given kind; `Turbo` without the feature falls back to `Zune`.
    pub fn new(kind: DecoderKind) -> Self {
        #[cfg(feature = "turbojpeg")]
        {
            let turbo = if kind == DecoderKind::Turbo { turbo::Turbo::new() } else { None };
            let kind = if kind == DecoderKind::Turbo && turbo.is_none() { DecoderKind::Zune } else { kind };
            Decoder { kind, turbo }
        }
        #[cfg(not(feature = "turbojpeg"))]
        {
            let kind = if kind == DecoderKind::Turbo { DecoderKind::Zune } else { kind };
            Decoder { kind }
        }
    }

    /// The decoder actually in use.
    pub fn kind(&self) -> DecoderKind {
        self.kind
    }

    /// Read the dimensions without decoding pixels (decodes fully only for exotic formats).
    pub fn header(&mut self, bytes: &[u8]) -> Result<Header, SampleError> {
        match sniff(bytes) {
            Format::Jpeg => {
                #[cfg(feature = "turbojpeg")]
                if let Some(t) = self.turbo.as_mut() {
                    if let Ok(h) = t.header(bytes) {
                        return Ok(Header { width: h.width, height: h.height, format: Format::Jpeg });
                    }
                }
                let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
                d.decode_headers().map_err(|e| SampleError::Header(format!("jpeg: {e:?}")))?;
                let (width, height) =
                    d.dimensions().ok_or_else(|| SampleError::Header("jpeg: no dimensions".into()))?;
                Ok(Header { width, height, format: Format::Jpeg })
            }
            format => {
                let reader = image::ImageReader::new(Cursor::new(bytes))
                    .with_guessed_format()
                    .map_err(|e| SampleError::Header(e.to_string()))?;
                let (w, h) = reader.into_dimensions().map_err(|e| SampleError::Header(e.to_string()))?;
                Ok(Header { width: w as usize, height: h as usize, format })
            }
        }
    }

    /// Decode to RGB at `1/denom` scale (1, 2, 4, 8) into `out`, reusing its allocation. Only
    /// libjpeg-turbo scales; the returned denominator is the one actually applied (1 otherwise), and
    /// `out`'s size is `ceil(width / denom) x ceil(height / denom)`.
    pub fn decode_into(
        &mut self,
        bytes: &[u8],
        denom: usize,
        out: &mut RgbImage,
    ) -> Result<usize, SampleError> {
        Ok(self.decode_window_into(bytes, denom, None, out)?.denom)
    }

    /// Like [`Decoder::decode_into`], but only `window` (pixels of the image at `1/denom` scale) is
    /// needed. libjpeg-turbo then decodes just those rows and the iMCU columns covering them, starting
    /// at or left of `window.x0` (the scaled iMCU width aligns it); the other decoders, and files
    /// libjpeg-turbo refuses, decode the whole image. Either way the result says which window `out`
    /// holds, and its pixels equal the same window of a whole-image decode except within a few pixels
    /// of a window edge that is not an image edge (chroma upsampling there sees the edge); callers pad
    /// the window for that.
    pub fn decode_window_into(
        &mut self,
        bytes: &[u8],
        denom: usize,
        window: Option<Window>,
        out: &mut RgbImage,
    ) -> Result<Decoded, SampleError> {
        // Only libjpeg-turbo scales or crops.
        #[cfg(not(feature = "turbojpeg"))]
        let _ = (denom, window);
        let format = sniff(bytes);
        if format == Format::Jpeg {
            #[cfg(feature = "turbojpeg")]
            if self.kind == DecoderKind::Turbo {
                if let Some(t) = self.turbo.as_mut() {
                    let denom = if matches!(denom, 2 | 4 | 8) { denom } else { 1 };
                    if let Ok((window, full_width, full_height)) = t.decode(bytes, denom, window, out) {
                        return Ok(Decoded { denom, window, full_width, full_height });
                    }
                    // A file that decodes whole but not in part still gets libjpeg-turbo.
                    if window.is_some() {
                        if let Ok((window, full_width, full_height)) = t.decode(bytes, denom, None, out) {
                            return Ok(Decoded { denom, window, full_width, full_height });
                        }
                    }
                    // Fall through: zune-jpeg handles CMYK/YCCK and is more lenient with odd files.
                }
            }
            if self.kind != DecoderKind::Image && zune_decode(bytes, out).is_ok() {
                return Ok(whole(out));
            }
        }
        image_decode(bytes, out)?;
        Ok(whole(out))
    }
}

/// The description of an unscaled, uncropped decode into `out`.
fn whole(out: &RgbImage) -> Decoded {
    Decoded {
        denom: 1,
        window: Window { x0: 0, y0: 0, x1: out.width, y1: out.height },
        full_width: out.width,
        full_height: out.height,
    }
}

fn zune_decode(bytes: &[u8], out: &mut RgbImage) -> Result<(), SampleError> {
    let bad = |what: String| SampleError::Decode(format!("jpeg: {what}"));
    let options = zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    d.decode_headers().map_err(|e| bad(format!("{e:?}")))?;
    let (w, h) = d.dimensions().ok_or_else(|| bad("no dimensions".into()))?;
    let size = d.output_buffer_size().ok_or_else(|| bad("no output size".into()))?;
    if size != w * h * 3 {
        return Err(bad(format!("unexpected output size {size} for {w}x{h} RGB")));
    }
    out.reshape(w, h);
    d.decode_into(&mut out.data[..size]).map_err(|e| bad(format!("{e:?}")))
}

fn image_decode(bytes: &[u8], out: &mut RgbImage) -> Result<(), SampleError> {
    let img = image::load_from_memory(bytes).map_err(|e| SampleError::Decode(e.to_string()))?;
    let rgb = img.into_rgb8();
    out.width = rgb.width() as usize;
    out.height = rgb.height() as usize;
    out.data = rgb.into_raw();
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, gray: bool) -> Vec<u8> {
        let mut buf = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
        if gray {
            let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]));
            img.write_with_encoder(enc).unwrap();
        } else {
            let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([200, (x % 256) as u8, 30]));
            img.write_with_encoder(enc).unwrap();
        }
        buf
    }

    #[test]
    fn scale_denominator_never_upsamples() {
        assert_eq!(scale_denominator(500.0, 375.0, 224, 224), 1);
        assert_eq!(scale_denominator(448.0, 448.0, 224, 224), 2);
        assert_eq!(scale_denominator(447.0, 900.0, 224, 224), 1);
        assert_eq!(scale_denominator(4000.0, 3000.0, 224, 224), 8);
        assert_eq!(scale_denominator(1000.0, 1000.0, 224, 224), 4);
    }

    #[test]
    fn all_decoders_agree_on_size_and_roughly_on_pixels() {
        let bytes = jpeg(64, 48, false);
        let mut imgs = Vec::new();
        for kind in [DecoderKind::Turbo, DecoderKind::Zune, DecoderKind::Image] {
            let mut d = Decoder::new(kind);
            let h = d.header(&bytes).unwrap();
            assert_eq!((h.width, h.height, h.format), (64, 48, Format::Jpeg));
            let mut out = RgbImage::default();
            assert_eq!(d.decode_into(&bytes, 1, &mut out).unwrap(), 1);
            assert_eq!((out.width, out.height), (64, 48));
            imgs.push(out);
        }
        for other in &imgs[1..] {
            let max = imgs[0].data.iter().zip(&other.data).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(max <= 8, "decoders differ by {max}");
        }
    }

    #[test]
    fn grayscale_becomes_rgb_and_png_decodes() {
        let bytes = jpeg(16, 8, true);
        let mut d = Decoder::new(DecoderKind::default());
        let mut out = RgbImage::default();
        d.decode_into(&bytes, 1, &mut out).unwrap();
        assert_eq!(out.data.len(), 16 * 8 * 3);
        assert!(out.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));

        let mut png = Vec::new();
        image::GrayImage::from_pixel(5, 3, image::Luma([77]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(sniff(&png), Format::Png);
        assert_eq!(d.header(&png).unwrap().width, 5);
        d.decode_into(&png, 2, &mut out).unwrap();
        assert_eq!((out.width, out.height), (5, 3));
        assert!(out.pixels().iter().all(|&v| v == 77));
    }

    #[test]
    fn garbage_and_truncated_files_are_errors_not_panics() {
        let mut d = Decoder::new(DecoderKind::default());
        let mut out = RgbImage::default();
        assert!(d.decode_into(b"not an image at all", 1, &mut out).is_err());
        assert!(d.header(b"").is_err());
        let bytes = jpeg(64, 64, false);
        let cut = &bytes[..bytes.len() / 3];
        // A truncated JPEG must either fail or decode to the right size (decoders may pad with grey).
        if d.decode_into(cut, 1, &mut out).is_ok() {
            assert_eq!((out.width, out.height), (64, 64));
        }
        assert!(d.decode_into(&bytes[..40], 1, &mut out).is_err());
    }

    #[cfg(feature = "turbojpeg")]
    #[test]
    fn turbo_scaled_decode_halves_the_size() {
        let bytes = jpeg(101, 60, false);
        let mut d = Decoder::new(DecoderKind::Turbo);
        let mut out = RgbImage::default();
        assert_eq!(d.decode_into(&bytes, 2, &mut out).unwrap(), 2);
        assert_eq!((out.width, out.height), (51, 30));
        assert_eq!(d.decode_into(&bytes, 8, &mut out).unwrap(), 8);
        assert_eq!((out.width, out.height), (13, 8));
    }

    /// A photo-like test image: smooth shading, hard edges and fine noise, so that chroma upsampling and
    /// the IDCT have real work at every window edge.
    #[cfg(feature = "turbojpeg")]
    pub(crate) fn textured(w: usize, h: usize, seed: u64) -> Vec<u8> {
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[seed]);
        let mut px = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
                let edge = if (x / 13 + y / 17) % 3 == 0 { 60.0 } else { 0.0 };
                for c in 0..3 {
                    let wave = 80.0 * ((fx * (3 + c) as f64 + fy * 5.0) * 6.3).sin();
                    let v = 110.0 + wave + edge + 30.0 * (rng.f64() - 0.5) + 40.0 * c as f64 * fy;
                    px[(y * w + x) * 3 + c] = v.clamp(0.0, 255.0) as u8;
                }
            }
        }
        px
    }

    /// Encode packed RGB with libjpeg-turbo at quality 90 with the given chroma subsampling
    /// (`Gray` encodes the luma only).
    #[cfg(feature = "turbojpeg")]
    pub(crate) fn encode(px: &[u8], w: usize, h: usize, subsamp: turbojpeg::Subsamp) -> Vec<u8> {
        encode_with(px, w, h, subsamp, false)
    }

    #[cfg(feature = "turbojpeg")]
    fn encode_with(px: &[u8], w: usize, h: usize, subsamp: turbojpeg::Subsamp, progressive: bool) -> Vec<u8> {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_progressive(progressive).unwrap();
        c.set_quality(90).unwrap();
        c.set_subsamp(subsamp).unwrap();
        let gray: Vec<u8>;
        let (pixels, pitch, format) = if subsamp == turbojpeg::Subsamp::Gray {
            gray = px.chunks_exact(3).map(|p| p[1]).collect();
            (&gray[..], w, turbojpeg::PixelFormat::GRAY)
        } else {
            (px, w * 3, turbojpeg::PixelFormat::RGB)
        };
        c.compress_to_vec(turbojpeg::Image { pixels, width: w, pitch, height: h, format }).unwrap()
    }

    /// Window decoding equals whole-image decoding (at the same DCT scale) inside the window, over many
    /// random windows, sizes (odd ones included), scales and subsamplings. Only pixels within
    /// `PAD` of a cut that is not an image edge may differ: libjpeg-turbo upsamples chroma as if the cut
    /// were the image border (observed: only the row or column at the cut itself).
    #[cfg(feature = "turbojpeg")]
    #[test]
    fn window_decode_equals_whole_decode_inside_the_window() {
        use turbojpeg::Subsamp;
        const PAD: usize = 2;
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[42]);
        let mut d = Decoder::new(DecoderKind::Turbo);
        let (mut whole_img, mut part) = (RgbImage::default(), RgbImage::default());
        let mut worst = [0usize; 8];
        for (case, (w, h)) in [(501, 375), (333, 499), (64, 47), (17, 9), (640, 480)].into_iter().enumerate()
        {
            let px = textured(w, h, case as u64);
            for sub in [Subsamp::Sub2x2, Subsamp::None, Subsamp::Gray, Subsamp::Sub2x1] {
                let bytes = encode(&px, w, h, sub);
                for denom in [1, 2, 4, 8] {
                    let got = d.decode_window_into(&bytes, denom, None, &mut whole_img).unwrap();
                    assert_eq!(got.denom, denom);
                    let (fw, fh) = (whole_img.width, whole_img.height);
                    assert_eq!((fw, fh), (scaled_dim(w, denom), scaled_dim(h, denom)));
                    for _ in 0..25 {
                        let x0 = rng.below(fw as u64) as usize;
                        let y0 = rng.below(fh as u64) as usize;
                        let x1 = x0 + 1 + rng.below((fw - x0) as u64) as usize;
                        let y1 = y0 + 1 + rng.below((fh - y0) as u64) as usize;
                        let want = Window { x0, y0, x1, y1 };
                        let got = d.decode_window_into(&bytes, denom, Some(want), &mut part).unwrap();
                        let win = got.window;
                        assert_eq!((got.denom, got.full_width, got.full_height), (denom, fw, fh));
                        assert!(win.x0 <= x0 && (win.y0, win.x1, win.y1) == (y0, x1, y1), "{want:?} {win:?}");
                        assert!(x0 - win.x0 < 32, "{want:?} {win:?}");
                        assert_eq!((part.width, part.height), (win.x1 - win.x0, win.y1 - win.y0));
                        for y in win.y0..win.y1 {
                            for x in win.x0..win.x1 {
                                // Distance to the nearest cut that is not an image edge.
                                let mut dist = usize::MAX;
                                if win.x0 > 0 {
                                    dist = dist.min(x - win.x0);
                                }
                                if win.x1 < fw {
                                    dist = dist.min(win.x1 - 1 - x);
                                }
                                if win.y0 > 0 {
                                    dist = dist.min(y - win.y0);
                                }
                                if win.y1 < fh {
                                    dist = dist.min(win.y1 - 1 - y);
                                }
                                let a = &part.data[((y - win.y0) * part.width + x - win.x0) * 3..][..3];
                                let b = &whole_img.data[(y * fw + x) * 3..][..3];
                                let diff =
                                    a.iter().zip(b).map(|(p, q)| p.abs_diff(*q) as usize).max().unwrap();
                                if diff > 0 {
                                    let k = dist.min(7);
                                    worst[k] = worst[k].max(diff);
                                    assert!(
                                        dist < PAD,
                                        "{w}x{h} {sub:?} 1/{denom} {want:?} at ({x}, {y}): {diff}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        eprintln!("max difference by distance to a cut: {worst:?}");
    }

    /// Progressive files take the window path too (libjpeg-turbo buffers all scans, then crops),
    /// with the same pixels inside the window.
    #[cfg(feature = "turbojpeg")]
    #[test]
    fn progressive_window_decode_matches_whole_decode() {
        let (w, h) = (203, 151);
        let bytes = encode_with(&textured(w, h, 7), w, h, turbojpeg::Subsamp::Sub2x2, true);
        let mut d = Decoder::new(DecoderKind::Turbo);
        let (mut whole_img, mut part) = (RgbImage::default(), RgbImage::default());
        d.decode_window_into(&bytes, 1, None, &mut whole_img).unwrap();
        let want = Window { x0: 50, y0: 40, x1: 150, y1: 120 };
        let got = d.decode_window_into(&bytes, 1, Some(want), &mut part).unwrap();
        let win = got.window;
        assert_eq!((win.x0, win.y0, win.x1, win.y1), (48, 40, 150, 120));
        for y in win.y0 + 1..win.y1 - 1 {
            for x in win.x0 + 1..win.x1 - 1 {
                let a = &part.data[((y - win.y0) * part.width + x - win.x0) * 3..][..3];
                assert_eq!(a, &whole_img.data[(y * w + x) * 3..][..3], "({x}, {y})");
            }
        }
    }
}
