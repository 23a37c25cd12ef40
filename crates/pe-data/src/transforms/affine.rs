//! Affine warps with Pillow's `Image.transform(AFFINE)` semantics: rotate, shear and translate.
//!
//! The matrix maps output pixel centers to input coordinates (`x_in = a (x + .5) + b (y + .5) + c`),
//! output pixels whose source falls outside the image get the fill colour, and inside it the
//! bilinear/bicubic taps clamp to the border, as in Pillow's `Geometry.c`.

// Tap loops index weights and pixels by tap position (`wx[i]`, `taps[3 * i + c]`), which reads closer
// to the filter's definition than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::decode::RgbImage;
use crate::transforms::resize::Filter;

/// `(a, b, c, d, e, f)`: `x_in = a x + b y + c`, `y_in = d x + e y + f`.
pub type Affine = [f64; 6];

/// PIL's `rotate(degrees)` about the image center (counter-clockwise for positive degrees).
pub fn rotation(width: usize, height: usize, degrees: f64) -> Affine {
    let a = -degrees.to_radians();
    let (cos, sin) = (a.cos(), a.sin());
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    // x_in = cos (x - cx) + sin (y - cy) + cx; y_in = -sin (x - cx) + cos (y - cy) + cy
    [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]
}

/// Pillow's cubic kernel with a = -0.5.
#[inline]
fn cubic(x: f32) -> f32 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Warp `src` into `out` (same size) with the affine map `m`, filling outside pixels with `fill`.
///
/// Speed matters here: RandAugment's rotate/shear/translate are the costliest ops of the DeiT recipe.
/// The loop is specialised per filter, reads the 2x2 or 4x4 footprint straight from the row slices when
/// it lies inside the image (the clamped lookup is only for the border), and skips taps whose weight is
/// exactly zero, which shears and translations have along one axis (`dx` or `dy` is 0). Skipping a zero
/// tap adds `+0.0` less, and the sums keep their order, so the result is bit-identical to the plain
/// 16-tap evaluation.
pub fn warp(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    crate::transforms::avx2_dispatch!(warp_impl, warp_avx2, src, m, filter, fill, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn warp_avx2(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    warp_impl(src, m, filter, fill, out)
}

#[inline(always)]
fn warp_impl(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    if m[0] == 1.0 && m[3] == 0.0 && src.width > 0 && src.height > 0 {
        return warp_rows(src, m, filter, fill, out);
    }
    if m[0] == 1.0 && m[1] == 0.0 && m[4] == 1.0 && src.width > 0 && src.height > 0 {
        return warp_columns(src, m, filter, fill, out);
    }
    match filter {
        Filter::Bilinear => warp_with::<false>(src, m, fill, out),
        Filter::Bicubic => warp_with::<true>(src, m, fill, out),
    }
}

/// The pixel loop shared by both filters: maps each output pixel center to the input, fills outside
/// pixels, and samples the rest with the top-left tap `(x0, y0)` and fractions `(dx, dy)`. The filter
/// is a const parameter so that the sampler is a direct call, inlined into the AVX2 twin (a closure or
/// fn item passed in stayed an out-of-line call per pixel, ~10 % of the DeiT pipeline).
#[inline(always)]
fn warp_with<const BICUBIC: bool>(src: &RgbImage, m: &Affine, fill: [u8; 3], out: &mut RgbImage) {
    let (w, h) = (src.width, src.height);
    out.reshape(w, h);
    let s = src.pixels();
    // Bicubic reads 16 taps per pixel: widen the image to f32 RGBx once, so that a tap is one 4-lane
    // load instead of four byte loads and conversions (the same f32 values, so the same sums).
    F32_SRC.with(|cell| {
        let mut f = cell.borrow_mut();
        if BICUBIC {
            f.clear();
            f.extend(s.chunks_exact(3).flat_map(|p| [p[0] as f32, p[1] as f32, p[2] as f32, 0.0]));
        }
        warp_rows_general::<BICUBIC>(s, &f, w, h, m, fill, out);
    });
}

thread_local! {
    /// [`warp_with`]'s widened copy of the source, kept per thread so a warp allocates nothing.
    static F32_SRC: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
fn warp_rows_general<const BICUBIC: bool>(
    s: &[u8],
    fsrc: &[f32],
    w: usize,
    h: usize,
    m: &Affine,
    fill: [u8; 3],
    out: &mut RgbImage,
) {
    for (yo, row) in out.data[..w * h * 3].chunks_exact_mut(w * 3).enumerate() {
        let yf = yo as f64 + 0.5;
        // Row start in input space; stepping x by one adds (m[0], m[3]).
        let (mut xin, mut yin) = (m[0] * 0.5 + m[1] * yf + m[2], m[3] * 0.5 + m[4] * yf + m[5]);
        for o in row.chunks_exact_mut(3) {
            let (xi, yi) = (xin, yin);
            xin += m[0];
            yin += m[3];
            if xi < 0.0 || xi >= w as f64 || yi < 0.0 || yi >= h as f64 {
                o.copy_from_slice(&fill);
                continue;
            }
            let (x, y) = (xi - 0.5, yi - 0.5);
            // x, y >= -0.5 here, so floor is truncation except in [-0.5, 0) (no libm call).
            let (x0, y0) = (if x < 0.0 { -1 } else { x as i64 }, if y < 0.0 { -1 } else { y as i64 });
            let (dx, dy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
            let acc = if BICUBIC {
                bicubic_f32_at(s, fsrc, w, h, x0, y0, dx, dy)
            } else {
                bilinear_at(s, w, h, x0, y0, dx, dy)
            };
            // Float-to-int casts saturate, so this rounds and clamps to [0, 255] in one step.
            for (dst, v) in o.iter_mut().zip(acc) {
                *dst = (v + 0.5) as u8;
            }
        }
    }
}

/// Maps that keep rows as rows at unit scale (`x_in = x + b y + c`, `y_in = e y + f`: translations
/// and ShearX): along an output row the input row and the sub-pixel fraction are constant, so every
/// pixel has the same weights and the taps are contiguous bytes. The interior of each row is then a
/// few multiply-adds over whole rows, which vectorise; border pixels go through the per-pixel code.
/// The arithmetic per value is the per-pixel one (same weights, same summation order), except that
/// the per-pixel loop reaches `x_in` by repeated addition: where that accumulated rounding moves the
/// fraction by an f32 ulp, a value can round to the neighbouring level.
#[inline(always)]
fn warp_rows(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    let (w, h) = (src.width, src.height);
    out.reshape(w, h);
    let s = src.pixels();
    let stride = w * 3;
    let mut hsum = vec![0f32; stride];
    let mut acc = vec![0f32; stride];
    for (yo, orow) in out.data[..h * stride].chunks_exact_mut(stride).enumerate() {
        let yf = yo as f64 + 0.5;
        let yi = m[3] * 0.5 + m[4] * yf + m[5];
        let xs = m[0] * 0.5 + m[1] * yf + m[2];
        let inside_x = |x: usize| {
            let xi = xs + x as f64;
            xi >= 0.0 && xi < w as f64
        };
        let x_lo = (0..w).position(inside_x).unwrap_or(w);
        let x_hi = x_lo + (x_lo..w).take_while(|&x| inside_x(x)).count();
        if yi < 0.0 || yi >= h as f64 || x_lo == x_hi {
            orow.chunks_exact_mut(3).for_each(|p| p.copy_from_slice(&fill));
            continue;
        }
        orow[..x_lo * 3].chunks_exact_mut(3).for_each(|p| p.copy_from_slice(&fill));
        orow[x_hi * 3..].chunks_exact_mut(3).for_each(|p| p.copy_from_slice(&fill));
        let y = yi - 0.5;
        let y0 = if y < 0.0 { -1 } else { y as i64 };
        let dy = (y - y0 as f64) as f32;
        let xb = xs - 0.5;
        let k = xb.floor() as i64;
        let dx = (xb - k as f64) as f32;
        // Output pixel x reads input columns from x + k - 1 (bicubic) or x + k (bilinear) on.
        let (lo_tap, hi_tap) = match filter {
            Filter::Bilinear => (0, 1),
            Filter::Bicubic => (1, 2),
        };
        let a = (lo_tap - k).clamp(x_lo as i64, x_hi as i64) as usize;
        let b = (w as i64 - 1 - hi_tap - k + 1).clamp(a as i64, x_hi as i64) as usize;
        let per_pixel = |orow: &mut [u8], x: usize| {
            let acc = match filter {
                Filter::Bilinear => bilinear_at(s, w, h, x as i64 + k, y0, dx, dy),
                Filter::Bicubic => bicubic_at(s, w, h, x as i64 + k, y0, dx, dy),
            };
            for (dst, v) in orow[x * 3..x * 3 + 3].iter_mut().zip(acc) {
                *dst = (v + 0.5) as u8;
            }
        };
        for x in (x_lo..a).chain(b..x_hi) {
            per_pixel(orow, x);
        }
        if a == b {
            continue;
        }
        let n = (b - a) * 3;
        let row_of = |yy: i64| &s[yy.clamp(0, h as i64 - 1) as usize * stride..][..stride];
        let acc = &mut acc[..n];
        acc.fill(0.0);
        match filter {
            Filter::Bilinear => {
                let c0 = ((a as i64 + k) * 3) as usize;
                let taps = [
                    (row_of(y0), c0, (1.0 - dx) * (1.0 - dy)),
                    (row_of(y0), c0 + 3, dx * (1.0 - dy)),
                    (row_of(y0 + 1), c0, (1.0 - dx) * dy),
                    (row_of(y0 + 1), c0 + 3, dx * dy),
                ];
                for (row, off, wt) in taps {
                    if wt != 0.0 {
                        for (a, &v) in acc.iter_mut().zip(&row[off..off + n]) {
                            *a += wt * v as f32;
                        }
                    }
                }
            }
            Filter::Bicubic => {
                let wx = [cubic(dx + 1.0), cubic(dx), cubic(1.0 - dx), cubic(2.0 - dx)];
                let wy = [cubic(dy + 1.0), cubic(dy), cubic(1.0 - dy), cubic(2.0 - dy)];
                let (ja, jb) = if dy == 0.0 { (1, 2) } else { (0, 4) };
                let (ia, ib) = if dx == 0.0 { (1, 2) } else { (0, 4) };
                let hsum = &mut hsum[..n];
                for j in ja..jb {
                    let row = row_of(y0 - 1 + j as i64);
                    hsum.fill(0.0);
                    for (i, &wxi) in wx.iter().enumerate().take(ib).skip(ia) {
                        let off = ((a as i64 + k - 1 + i as i64) * 3) as usize;
                        for (hv, &v) in hsum.iter_mut().zip(&row[off..off + n]) {
                            *hv += wxi * v as f32;
                        }
                    }
                    for (av, &hv) in acc.iter_mut().zip(hsum.iter()) {
                        *av += wy[j] * hv;
                    }
                }
            }
        }
        for (dst, &v) in orow[a * 3..b * 3].iter_mut().zip(acc.iter()) {
            *dst = (v + 0.5) as u8;
        }
    }
}

/// ShearY (`x_in = x + c`, `y_in = d x + y + f`): along an output column the sub-pixel fraction and
/// the row offset are constant, so the vertical weights are computed once per column instead of once
/// per pixel; with `c` a whole number of pixels the horizontal taps reduce to the one column. Same
/// caveat as [`warp_rows`] on the directly computed `y_in`.
#[inline(always)]
fn warp_columns(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    let (w, h) = (src.width, src.height);
    // `x_in - 0.5 = x + c` must have a zero fraction for the one-column shortcut.
    if m[2].fract() != 0.0 {
        return match filter {
            Filter::Bilinear => warp_with::<false>(src, m, fill, out),
            Filter::Bicubic => warp_with::<true>(src, m, fill, out),
        };
    }
    out.reshape(w, h);
    let s = src.pixels();
    let stride = w * 3;
    let shift = m[2] as i64;
    // Per output column: source column (or None: outside), y_in at output row 0, integer row offset
    // of the first tap relative to the output row, and the vertical weights.
    struct Col {
        xs: Option<usize>,
        y_in0: f64,
        k: i64,
        wy: [f32; 4],
    }
    let cols: Vec<Col> = (0..w)
        .map(|x| {
            let xi = m[0] * (x as f64 + 0.5) + m[2];
            let xs = (xi >= 0.0 && xi < w as f64).then_some((x as i64 + shift) as usize);
            let y_in0 = m[3] * (x as f64 + 0.5) + m[4] * 0.5 + m[5];
            let y = y_in0 - 0.5;
            let k = y.floor() as i64;
            let dy = (y - k as f64) as f32;
            let wy = match filter {
                Filter::Bilinear => [1.0 - dy, dy, 0.0, 0.0],
                Filter::Bicubic => [cubic(dy + 1.0), cubic(dy), cubic(1.0 - dy), cubic(2.0 - dy)],
            };
            Col { xs, y_in0, k, wy }
        })
        .collect();
    // Bilinear taps rows k, k+1; bicubic k-1 .. k+2.
    let (first, taps) = match filter {
        Filter::Bilinear => (0i64, 2usize),
        Filter::Bicubic => (-1i64, 4usize),
    };
    for (yo, orow) in out.data[..h * stride].chunks_exact_mut(stride).enumerate() {
        for (col, o) in cols.iter().zip(orow.chunks_exact_mut(3)) {
            let yi = col.y_in0 + yo as f64;
            let Some(xs) = col.xs.filter(|_| yi >= 0.0 && yi < h as f64) else {
                o.copy_from_slice(&fill);
                continue;
            };
            let top = yo as i64 + col.k + first;
            let mut acc = [0f32; 3];
            for (j, &wt) in col.wy[..taps].iter().enumerate() {
                if wt != 0.0 {
                    let row = (top + j as i64).clamp(0, h as i64 - 1) as usize;
                    let p: &[u8; 3] = s[row * stride + xs * 3..][..3].try_into().expect("3 bytes");
                    for c in 0..3 {
                        acc[c] += wt * p[c] as f32;
                    }
                }
            }
            for (dst, v) in o.iter_mut().zip(acc) {
                *dst = (v + 0.5) as u8;
            }
        }
    }
}

/// Index of the clamped pixel (x, y): taps beyond the border repeat the edge, as Pillow's XCLIP/YCLIP.
#[inline(always)]
fn clamped(w: usize, h: usize, x: i64, y: i64) -> usize {
    (y.clamp(0, h as i64 - 1) as usize * w + x.clamp(0, w as i64 - 1) as usize) * 3
}

#[inline(always)]
fn bilinear_at(s: &[u8], w: usize, h: usize, x0: i64, y0: i64, dx: f32, dy: f32) -> [f32; 3] {
    let taps = if x0 >= 0 && y0 >= 0 && x0 + 1 < w as i64 && y0 + 1 < h as i64 {
        let i = (y0 as usize * w + x0 as usize) * 3;
        [i, i + 3, i + w * 3, i + w * 3 + 3]
    } else {
        [
            clamped(w, h, x0, y0),
            clamped(w, h, x0 + 1, y0),
            clamped(w, h, x0, y0 + 1),
            clamped(w, h, x0 + 1, y0 + 1),
        ]
    };
    let weights = [(1.0 - dx) * (1.0 - dy), dx * (1.0 - dy), (1.0 - dx) * dy, dx * dy];
    let mut acc = [0f32; 3];
    for (i, wt) in taps.into_iter().zip(weights) {
        if wt != 0.0 {
            let p: &[u8; 3] = s[i..i + 3].try_into().expect("3 bytes");
            for c in 0..3 {
                acc[c] += wt * p[c] as f32;
            }
        }
    }
    acc
}

/// The four bicubic (a = -0.5) weights of the taps at distances `1 + d, d, 1 - d, 2 - d` for a
/// fraction `d` in [0, 1): each from the kernel's piece for that distance, skipping `cubic`'s
/// branches (at the piece boundaries both pieces give zero).
#[inline(always)]
fn bicubic_taps(d: f32) -> [f32; 4] {
    let a = -0.5f32;
    let near = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f32| (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    [far(d + 1.0), near(d), near(1.0 - d), far(2.0 - d)]
}

/// [`bicubic_at`] reading the interior taps from the f32 RGBx copy `f` of `s`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bicubic_f32_at(s: &[u8], f: &[f32], w: usize, h: usize, x0: i64, y0: i64, dx: f32, dy: f32) -> [f32; 3] {
    if x0 >= 1 && x0 + 2 < w as i64 && y0 >= 1 && y0 + 2 < h as i64 {
        return bicubic_interior::<f32, 4, 16>(f, w, x0, y0, dx, dy);
    }
    bicubic_at(s, w, h, x0, y0, dx, dy)
}

/// The 16 taps around `(x0, y0)`, all inside the image, from pixels `STRIDE` values apart; each tap
/// is read as 4 lanes (`LEN = 3 * STRIDE + 4` values per row) so that the per-channel sums vectorise.
/// Lane by lane the arithmetic is the scalar one; zero-weight taps add exactly nothing.
#[inline(always)]
fn bicubic_interior<T: Copy + Into<f32>, const STRIDE: usize, const LEN: usize>(
    px: &[T],
    w: usize,
    x0: i64,
    y0: i64,
    dx: f32,
    dy: f32,
) -> [f32; 3] {
    let (wx, wy) = (bicubic_taps(dx), bicubic_taps(dy));
    let mut acc = [0f32; 4];
    for j in 0..4 {
        let base = ((y0 - 1 + j as i64) as usize * w + x0 as usize - 1) * STRIDE;
        let taps: &[T; LEN] = px[base..base + LEN].try_into().expect("one row of taps");
        let mut row = [0f32; 4];
        for i in 0..4 {
            for c in 0..4 {
                row[c] += wx[i] * taps[STRIDE * i + c].into();
            }
        }
        for c in 0..4 {
            acc[c] += wy[j] * row[c];
        }
    }
    [acc[0], acc[1], acc[2]]
}

#[inline(always)]
fn bicubic_at(s: &[u8], w: usize, h: usize, x0: i64, y0: i64, dx: f32, dy: f32) -> [f32; 3] {
    if x0 >= 1 && x0 + 3 < w as i64 && y0 >= 1 && y0 + 2 < h as i64 {
        // A tap's fourth lane is the next pixel's R (ignored): `x0 + 3 < w` keeps that byte in the row.
        return bicubic_interior::<u8, 3, 13>(s, w, x0, y0, dx, dy);
    }
    let wx = [cubic(dx + 1.0), cubic(dx), cubic(1.0 - dx), cubic(2.0 - dx)];
    let wy = [cubic(dy + 1.0), cubic(dy), cubic(1.0 - dy), cubic(2.0 - dy)];
    // With a zero fraction only the tap at 0 has a non-zero weight (exactly 1).
    let (ja, jb) = if dy == 0.0 { (1, 2) } else { (0, 4) };
    let (ia, ib) = if dx == 0.0 { (1, 2) } else { (0, 4) };
    let mut acc = [0f32; 3];
    for j in ja..jb {
        let yy = y0 - 1 + j as i64;
        let mut row = [0f32; 3];
        for i in ia..ib {
            let p = clamped(w, h, x0 - 1 + i as i64, yy);
            for c in 0..3 {
                row[c] += wx[i] * s[p + c] as f32;
            }
        }
        for c in 0..3 {
            acc[c] += wy[j] * row[c];
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                img.data[o..o + 3].copy_from_slice(&[(x * 10) as u8, (y * 10) as u8, 7]);
            }
        }
        img
    }

    #[test]
    fn identity_and_integer_translation_are_exact() {
        let src = ramp(8, 6);
        let mut out = RgbImage::default();
        for f in [Filter::Bilinear, Filter::Bicubic] {
            warp(&src, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], f, [1, 2, 3], &mut out);
            assert_eq!(out, src);
            // timm translate_x_rel(+2 px): x_in = x + 2, the content moves left, the right gets fill.
            warp(&src, &[1.0, 0.0, 2.0, 0.0, 1.0, 0.0], f, [1, 2, 3], &mut out);
            assert_eq!(&out.data[0..3], &[20, 0, 7]);
            assert_eq!(&out.data[7 * 3..8 * 3], &[1, 2, 3]);
        }
    }

    #[test]
    fn rotation_by_90_moves_corners_like_pillow() {
        // PIL: rotate(90) is counter-clockwise: the top-right corner goes to the top-left.
        let src = ramp(6, 6);
        let mut out = RgbImage::default();
        warp(&src, &rotation(6, 6, 90.0), Filter::Bilinear, [0, 0, 0], &mut out);
        assert_eq!(&out.data[0..3], &src.data[5 * 3..6 * 3]);
        warp(&src, &rotation(6, 6, 0.0), Filter::Bicubic, [0, 0, 0], &mut out);
        assert_eq!(out, src);
    }

    /// The plain evaluation every fast path must reproduce bit for bit: all 4 or 16 taps through the
    /// clamped lookup, summed in the same order.
    fn warp_plain(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3]) -> RgbImage {
        let (w, h) = (src.width, src.height);
        let mut out = RgbImage::new(w, h);
        for yo in 0..h {
            let yf = yo as f64 + 0.5;
            let (mut xin, mut yin) = (m[0] * 0.5 + m[1] * yf + m[2], m[3] * 0.5 + m[4] * yf + m[5]);
            for xo in 0..w {
                let o = (yo * w + xo) * 3;
                let (xi, yi) = (xin, yin);
                xin += m[0];
                yin += m[3];
                if xi < 0.0 || xi >= w as f64 || yi < 0.0 || yi >= h as f64 {
                    out.data[o..o + 3].copy_from_slice(&fill);
                    continue;
                }
                let (x, y) = (xi - 0.5, yi - 0.5);
                let (x0, y0) = (x.floor() as i64, y.floor() as i64);
                let (dx, dy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
                let at = |x: i64, y: i64| clamped(w, h, x, y);
                let mut acc = [0f32; 3];
                let taps: Vec<(usize, f32)> = match filter {
                    Filter::Bilinear => vec![
                        (at(x0, y0), (1.0 - dx) * (1.0 - dy)),
                        (at(x0 + 1, y0), dx * (1.0 - dy)),
                        (at(x0, y0 + 1), (1.0 - dx) * dy),
                        (at(x0 + 1, y0 + 1), dx * dy),
                    ],
                    Filter::Bicubic => Vec::new(),
                };
                for (i, wt) in taps {
                    for c in 0..3 {
                        acc[c] += wt * src.data[i + c] as f32;
                    }
                }
                if filter == Filter::Bicubic {
                    let wx = [cubic(dx + 1.0), cubic(dx), cubic(1.0 - dx), cubic(2.0 - dx)];
                    let wy = [cubic(dy + 1.0), cubic(dy), cubic(1.0 - dy), cubic(2.0 - dy)];
                    for (j, wyj) in wy.iter().enumerate() {
                        let mut row = [0f32; 3];
                        for (i, wxi) in wx.iter().enumerate() {
                            let p = at(x0 - 1 + i as i64, y0 - 1 + j as i64);
                            for c in 0..3 {
                                row[c] += wxi * src.data[p + c] as f32;
                            }
                        }
                        for c in 0..3 {
                            acc[c] += wyj * row[c];
                        }
                    }
                }
                for (dst, v) in out.data[o..o + 3].iter_mut().zip(acc) {
                    *dst = (v + 0.5) as u8;
                }
            }
        }
        out
    }

    /// The specialised paths against the plain evaluation, on random maps of each RandAugment kind:
    /// bit-identical except where the row path's directly computed `x_in` and the per-pixel loop's
    /// accumulated one round differently (at most one level, on almost no values).
    #[test]
    fn fast_paths_equal_the_plain_evaluation() {
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[9]);
        let mut out = RgbImage::default();
        let (mut differ, mut total) = (0, 0);
        for (w, h, cases) in [(37, 29, 200), (224, 224, 20), (5, 3, 20)] {
            let mut src = RgbImage::new(w, h);
            src.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
            for k in 0..cases {
                let f = rng.uniform(-0.3, 0.3);
                let t = rng.uniform(-0.45, 0.45);
                let m = match k % 5 {
                    0 => rotation(w, h, rng.uniform(-30.0, 30.0)),
                    1 => [1.0, f, 0.0, 0.0, 1.0, 0.0],
                    2 => [1.0, 0.0, 0.0, f, 1.0, 0.0],
                    3 => [1.0, 0.0, t * w as f64, 0.0, 1.0, 0.0],
                    _ => [1.0, 0.0, 0.0, 0.0, 1.0, t * h as f64],
                };
                for filter in [Filter::Bilinear, Filter::Bicubic] {
                    warp(&src, &m, filter, [1, 2, 3], &mut out);
                    let want = warp_plain(&src, &m, filter, [1, 2, 3]);
                    for (a, b) in out.data.iter().zip(&want.data) {
                        assert!(a.abs_diff(*b) <= 1, "{w}x{h} case {k} {filter:?}: {a} vs {b}");
                        differ += (a != b) as usize;
                    }
                    total += out.data.len();
                }
            }
        }
        assert!(differ * 10_000 < total, "{differ} of {total} differ");
    }

    /// The AVX2 twin (what `warp` runs on this machine, if it has AVX2) and the baseline build agree
    /// bit for bit.
    #[test]
    fn avx2_twin_equals_baseline_build() {
        let mut rng = crate::rng::Rng::keyed(crate::rng::Stream::Sample, &[21]);
        let mut src = RgbImage::new(41, 33);
        src.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
        let (mut a, mut b) = (RgbImage::default(), RgbImage::default());
        for k in 0..10 {
            let f = rng.uniform(-0.3, 0.3);
            let m = match k % 5 {
                0 => rotation(41, 33, rng.uniform(-30.0, 30.0)),
                1 => [1.0, f, 0.0, 0.0, 1.0, 0.0],
                2 => [1.0, 0.0, 0.0, f, 1.0, 0.0],
                3 => [1.0, 0.0, f * 41.0, 0.0, 1.0, 0.0],
                _ => [1.0, 0.0, 0.0, 0.0, 1.0, f * 33.0],
            };
            for filter in [Filter::Bilinear, Filter::Bicubic] {
                warp(&src, &m, filter, [9, 8, 7], &mut a);
                warp_impl(&src, &m, filter, [9, 8, 7], &mut b);
                assert_eq!(a, b, "{k} {filter:?}");
            }
        }
    }
}
