//! libjpeg-turbo through TurboJPEG 3's C API: header, DCT scaling and region-of-interest decoding.
//!
//! Why the raw bindings: the safe `turbojpeg` crate (1.x, vendoring libjpeg-turbo 3.1) exposes neither
//! `tj3SetCroppingRegion` nor its handle, and its `decompress` insists on a buffer for the whole scaled
//! image. Decoding only the rows and iMCU columns a crop needs is the largest single saving for
//! RandomResizedCrop (which keeps ~43 % of a photo on average), so this module owns the handle and
//! makes the few calls itself. Every `unsafe` block is a plain FFI call on the handle this struct owns,
//! with buffer sizes checked in Rust before the call.
#![allow(unsafe_code)]

use super::Window;
use crate::error::SampleError;
use std::ffi::{c_int, CStr};
use turbojpeg::raw;

/// What the header says, in the units the cropping rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurboHeader {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// iMCU width in pixels at full scale (8, 16 or 32), or `None` for a sampling layout TurboJPEG
    /// cannot classify (such files decode whole, never cropped).
    pub mcu_width: Option<usize>,
}

/// `TJSCALED`: a dimension at scale `1 / denom`, rounded up.
pub fn scaled(dim: usize, denom: usize) -> usize {
    dim.div_ceil(denom)
}

/// An owned TurboJPEG decompression handle.
pub struct Turbo {
    handle: raw::tjhandle,
}

// SAFETY: the handle is heap state owned by this struct alone; TurboJPEG handles may move between
// threads as long as one thread uses them at a time, which `&mut self` on every call guarantees.
unsafe impl Send for Turbo {}

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `tj3Init`, is non-null and is destroyed exactly once.
        unsafe { raw::tj3Destroy(self.handle) }
    }
}

impl Turbo {
    /// A new decompressor, or `None` when libjpeg-turbo cannot allocate one.
    pub fn new() -> Option<Self> {
        // SAFETY: plain constructor call; a null result is checked.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        (!handle.is_null()).then_some(Turbo { handle })
    }

    fn error(&self) -> SampleError {
        // SAFETY: `tj3GetErrorStr` returns a NUL-terminated string owned by the handle, valid until the
        // next call on it; it is copied out at once.
        let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) };
        SampleError::Decode(format!("libjpeg-turbo: {}", msg.to_string_lossy()))
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: reading an integer parameter of a valid handle.
        unsafe { raw::tj3Get(self.handle, param as c_int) }
    }

    /// Parse the header of `bytes` (this also primes the handle for `decode`).
    pub fn header(&mut self, bytes: &[u8]) -> Result<TurboHeader, SampleError> {
        // SAFETY: `bytes` is a valid slice for the duration of the call; TurboJPEG only reads it.
        let rc = unsafe { raw::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as raw::size_t) };
        if rc != 0 {
            return Err(self.error());
        }
        let width = self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
        if width <= 0 || height <= 0 {
            return Err(SampleError::Decode("libjpeg-turbo: no dimensions".into()));
        }
        // tjMCUWidth[] from turbojpeg.h (a static array in the header, so not in the bindings).
        let mcu_width = match self.get(raw::TJPARAM_TJPARAM_SUBSAMP) {
            s if s == raw::TJSAMP_TJSAMP_444
                || s == raw::TJSAMP_TJSAMP_GRAY
                || s == raw::TJSAMP_TJSAMP_440 =>
            {
                Some(8)
            }
            s if s == raw::TJSAMP_TJSAMP_422 || s == raw::TJSAMP_TJSAMP_420 => Some(16),
            s if s == raw::TJSAMP_TJSAMP_411 => Some(32),
            s if s == raw::TJSAMP_TJSAMP_441 => Some(8),
            _ => None,
        };
        Ok(TurboHeader { width: width as usize, height: height as usize, mcu_width })
    }

    /// Decode `bytes` to packed RGB at scale `1 / denom` (1, 2, 4 or 8). With a `window` (in scaled
    /// pixels), only rows `y0..y1` and the iMCU columns covering `x0..x1` are decoded: the window's left
    /// edge moves down to the scaled iMCU width, as TurboJPEG requires. Returns the window actually
    /// decoded (`out` is its size) and the full scaled size.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        denom: usize,
        window: Option<Window>,
        out: &mut crate::decode::RgbImage,
    ) -> Result<(Window, usize, usize), SampleError> {
        let h = self.header(bytes)?;
        let denom = if matches!(denom, 2 | 4 | 8) { denom } else { 1 };
        // SAFETY: setting a supported scaling factor on a valid handle.
        let rc = unsafe {
            raw::tj3SetScalingFactor(self.handle, raw::tjscalingfactor { num: 1, denom: denom as c_int })
        };
        if rc != 0 {
            return Err(self.error());
        }
        let (fw, fh) = (scaled(h.width, denom), scaled(h.height, denom));
        let full = Window { x0: 0, y0: 0, x1: fw, y1: fh };
        let win = match (window, h.mcu_width) {
            (Some(w), Some(mcu)) if w.x0 < w.x1 && w.y0 < w.y1 && w.x1 <= fw && w.y1 <= fh => {
                let step = scaled(mcu, denom);
                Window { x0: w.x0 / step * step, ..w }
            }
            _ => full,
        };
        let region = if win == full {
            raw::tjregion { x: 0, y: 0, w: 0, h: 0 }
        } else {
            raw::tjregion {
                x: win.x0 as c_int,
                y: win.y0 as c_int,
                w: (win.x1 - win.x0) as c_int,
                h: (win.y1 - win.y0) as c_int,
            }
        };
        // SAFETY: the region was checked against the scaled size above; TurboJPEG validates it again.
        if unsafe { raw::tj3SetCroppingRegion(self.handle, region) } != 0 {
            return Err(self.error());
        }
        let (w, hgt) = (win.x1 - win.x0, win.y1 - win.y0);
        out.reshape(w, hgt);
        let pitch = w * 3;
        debug_assert!(out.data.len() >= pitch * hgt);
        // SAFETY: `out.data` holds at least `pitch * hgt` bytes (reshape above), which is exactly what
        // TurboJPEG writes for a `w x hgt` RGB output with this pitch; `bytes` is only read.
        let rc = unsafe {
            raw::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as raw::size_t,
                out.data.as_mut_ptr(),
                pitch as c_int,
                raw::TJPF_TJPF_RGB as c_int,
            )
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok((win, fw, fh))
    }
}
