//! Bias-free 2-D convolution (ResNet's) whose forward runs convolutions over maps of a few pixels as
//! the matrix products they are.
//!
//! On the CPU, libtorch's convolution (oneDNN) is slow on tiny maps, which is what a ResNet's last
//! stages see at low resolution (stage 4 of a 32 px input is 1×1). Forward + backward of a 1×1 conv
//! 2048 → 512 over a 128×2048×1×1 batch takes 14–26 ms (fp32 or bf16, either layout); the same
//! product as one GEMM takes 1.8 ms (bf16) / 3.1–3.2 ms (fp32). GEMM keeps winning on 2×2 and 4×4
//! maps and stops winning between 4×4 and 8×8 (`bench/conv_gemm.py`, bench/results/conv_gemm.md), hence
//! [`GEMM_MAX_PIXELS`]. On CUDA, cuDNN keeps choosing (not measured against GEMM yet).

use tch::{nn, Device, Tensor};

use crate::init;

/// Output maps of at most this many pixels run as a matrix product on the CPU.
pub const GEMM_MAX_PIXELS: i64 = 16;

/// Whether a pointwise map producing `pixels` output pixels per image on `device` runs as a GEMM.
pub fn runs_as_gemm(device: Device, pixels: i64) -> bool {
    device == Device::Cpu && pixels <= GEMM_MAX_PIXELS
}

/// `W x` at every pixel: `xs` [N, C, H, W] and `weight` [O, C] give [N, O, H, W], as one matrix
/// product (the 1×1 convolution with kernel `weight`). The output keeps the input's memory format.
pub fn per_pixel(xs: &Tensor, weight: &Tensor) -> Tensor {
    apply_per_pixel(xs, |rows| rows.linear(weight, None::<Tensor>), |maps| weight.matmul(maps))
}

/// `Wᵀ x` at every pixel: `xs` [N, C, H, W] and `weight` [C, O] give [N, O, H, W] (the 1×1
/// convolution with kernel `weightᵀ`, without materialising the transpose).
pub fn per_pixel_transposed(xs: &Tensor, weight: &Tensor) -> Tensor {
    apply_per_pixel(xs, |rows| rows.matmul(weight), |maps| weight.tr().matmul(maps))
}

/// Applies a per-pixel linear map in whichever orientation the input's layout makes free:
/// channels-last pixels are the rows of an [N·H·W, C] matrix (`on_rows` gives [N·H·W, O]); NCHW
/// images are [N, C, H·W] stacks of columns (`on_columns` gives [N, O, H·W]).
fn apply_per_pixel(
    xs: &Tensor,
    on_rows: impl FnOnce(&Tensor) -> Tensor,
    on_columns: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    // The batch dimension is left to libtorch (-1), so a traced model (`pe export`) takes any batch.
    let (_, c, h, w) = xs.size4().expect("a per-pixel map takes [N, C, H, W]");
    if xs.stride()[1] == 1 || h * w == 1 {
        // [N, C, H, W] (channels last) -> [N·H·W, C] -> [N·H·W, O] -> [N, O, H, W] (channels last)
        let out = on_rows(&xs.permute([0, 2, 3, 1]).reshape([-1, c]));
        let o = out.size()[1];
        out.view([-1, h, w, o]).permute([0, 3, 1, 2])
    } else {
        // [N, C, H, W] -> [N, C, H·W] -> [N, O, H·W] -> [N, O, H, W]
        let out = on_columns(&xs.reshape([-1, c, h * w]));
        let o = out.size()[1];
        out.view([-1, o, h, w])
    }
}

/// A bias-free convolution with "same" padding (`kernel / 2`), as every ResNet conv is.
#[derive(Debug)]
pub struct Conv {
    /// `[out, in, k, k]`, registered as `<path>.weight`.
    pub ws: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv {
    /// Registers `<path>.weight`, initialised as torchvision's ResNet does (kaiming normal, fan-out).
    pub fn new(path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> Self {
        let init = init::kaiming_normal_fan_out(c_out * kernel * kernel);
        let ws = path.var("weight", &[c_out, c_in, kernel, kernel], init);
        Self { ws, stride, padding: kernel / 2 }
    }

    /// The same convolution as a per-pixel matrix where that is exact: a 1×1 kernel (after taking
    /// every `stride`-th pixel), or any kernel over a 1×1 map, where zero padding leaves only the
    /// centre tap touching a pixel.
    fn as_matrix(&self, xs: &Tensor) -> Option<Tensor> {
        let (_, _, h, w) = xs.size4().ok()?;
        let kernel = self.ws.size()[2];
        let out_pixels = ((h - 1) / self.stride + 1) * ((w - 1) / self.stride + 1);
        if !runs_as_gemm(xs.device(), out_pixels) {
            return None;
        }
        let weight = if kernel == 1 {
            self.ws.flatten(1, 3)
        } else if h == 1 && w == 1 {
            self.ws.select(3, self.padding).select(2, self.padding)
        } else {
            return None;
        };
        let xs = match self.stride {
            1 => xs.shallow_clone(),
            s => xs.slice(2, 0, None, s).slice(3, 0, None, s),
        };
        Some(per_pixel(&xs, &weight))
    }
}

impl nn::Module for Conv {
    fn forward(&self, xs: &Tensor) -> Tensor {
        // [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        self.as_matrix(xs).unwrap_or_else(|| {
            let (s, p) = (self.stride, self.padding);
            xs.conv2d(&self.ws, None::<Tensor>, [s, s], [p, p], [1, 1], 1)
        })
    }
}
