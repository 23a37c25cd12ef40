//! Affine warps with Pillow's `Image.transform(AFFINE)` semantics: rotate, shear and translate.
//!
//! The matrix maps output pixel centers to input coordinates (`x_in = a (x + .5) + b (y + .5) + c`),
//! output pixels whose source falls outside the image get the fill colour, and inside it the
//! bilinear/bicubic taps clamp to the border, as in Pillow's `Geometry.c`.

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
pub fn warp(src: &RgbImage, m: &Affine, filter: Filter, fill: [u8; 3], out: &mut RgbImage) {
    let (w, h) = (src.width, src.height);
    out.reshape(w, h);
    let s = src.pixels();
    let (wi, hi) = (w as i64, h as i64);
    // Index of the clamped pixel (x, y): taps beyond the border repeat the edge, as Pillow's XCLIP/YCLIP.
    let at =
        |x: i64, y: i64| -> usize { (y.clamp(0, hi - 1) as usize * w + x.clamp(0, wi - 1) as usize) * 3 };
    for yo in 0..h {
        let yf = yo as f64 + 0.5;
        // Row start in input space; stepping x by one adds (m[0], m[3]).
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
            // x, y >= -0.5 here, so floor is truncation except in [-0.5, 0) (no libm call).
            let (x0, y0) = (if x < 0.0 { -1 } else { x as i64 }, if y < 0.0 { -1 } else { y as i64 });
            let (dx, dy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
            let mut acc = [0f32; 3];
            match filter {
                Filter::Bilinear => {
                    let taps = [
                        (at(x0, y0), (1.0 - dx) * (1.0 - dy)),
                        (at(x0 + 1, y0), dx * (1.0 - dy)),
                        (at(x0, y0 + 1), (1.0 - dx) * dy),
                        (at(x0 + 1, y0 + 1), dx * dy),
                    ];
                    for (i, wt) in taps {
                        for c in 0..3 {
                            acc[c] += wt * s[i + c] as f32;
                        }
                    }
                }
                Filter::Bicubic => {
                    let wx = [cubic(dx + 1.0), cubic(dx), cubic(1.0 - dx), cubic(2.0 - dx)];
                    let wy = [cubic(dy + 1.0), cubic(dy), cubic(1.0 - dy), cubic(2.0 - dy)];
                    for (j, &wyj) in wy.iter().enumerate() {
                        let yy = y0 - 1 + j as i64;
                        let mut row = [0f32; 3];
                        let interior = x0 >= 1 && x0 + 2 < wi && yy >= 0 && yy < hi;
                        let base = if interior { at(x0 - 1, yy) } else { 0 };
                        for (i, &wxi) in wx.iter().enumerate() {
                            let p = if interior { base + 3 * i } else { at(x0 - 1 + i as i64, yy) };
                            for c in 0..3 {
                                row[c] += wxi * s[p + c] as f32;
                            }
                        }
                        for c in 0..3 {
                            acc[c] += wyj * row[c];
                        }
                    }
                }
            }
            // Float-to-int casts saturate, so this rounds and clamps to [0, 255] in one step.
            for (dst, v) in out.data[o..o + 3].iter_mut().zip(acc) {
                *dst = (v + 0.5) as u8;
            }
        }
    }
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
}
