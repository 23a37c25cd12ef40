//! Weight initialisations the reference implementations use but tch does not provide.

use tch::{nn, Tensor};

/// timm's `trunc_normal_(std=0.02)` for ViT linears, position embeddings and the cls token.
pub const VIT_STD: f64 = 0.02;

/// Creates a trainable variable drawn from a normal distribution truncated to `[-2, 2]`
/// (absolute bounds, as `torch.nn.init.trunc_normal_` defaults), by inverse-CDF sampling.
pub fn trunc_normal(path: &nn::Path, name: &str, dims: &[i64], std: f64) -> Tensor {
    let var = path.zeros(name, dims);
    tch::no_grad(|| {
        let (a, b) = (-2.0, 2.0);
        // Φ(a), Φ(b) of N(0, std²) through libtorch's erf.
        let bounds = Tensor::from_slice(&[a, b]) / (std * std::f64::consts::SQRT_2);
        let cdf = (bounds.erf() + 1.0) / 2.0;
        let (lo, hi) = (cdf.double_value(&[0]), cdf.double_value(&[1]));
        let mut sample = var.empty_like();
        let _ = sample.uniform_(2.0 * lo - 1.0, 2.0 * hi - 1.0);
        let sample = sample.erfinv() * (std * std::f64::consts::SQRT_2);
        var.shallow_clone().copy_(&sample.clamp(a, b));
    });
    var
}

/// torchvision's ResNet conv init, `kaiming_normal_(mode="fan_out", nonlinearity="relu")`:
/// a normal with std √(2 / fan_out), fan_out = out_channels × kernel area.
pub fn kaiming_normal_fan_out(fan_out: i64) -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev: (2.0 / fan_out as f64).sqrt() }
}

/// A linear layer initialised as timm's ViT does: weight ~ trunc_normal(0.02), bias = 0.
pub fn vit_linear(path: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    let ws = trunc_normal(&path, "weight", &[out_dim, in_dim], VIT_STD);
    let bs = bias.then(|| path.zeros("bias", &[out_dim]));
    nn::Linear { ws, bs }
}
