//! PyTorch's default initialisations for layers the references leave at their defaults.

use tch::nn;

/// `nn.Linear`'s default: weight and bias ~ U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a=√5).
pub fn torch_default_linear(path: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let uniform = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(
        path,
        in_dim,
        out_dim,
        nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true },
    )
}

/// `nn.Conv2d`'s default, the same rule with fan_in = c_in × kernel area.
pub fn torch_default_conv(path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
    let uniform = nn::Init::Uniform { lo: -bound, up: bound };
    let config = nn::ConvConfig { stride, ws_init: uniform, bs_init: uniform, ..Default::default() };
    nn::conv2d(path, c_in, c_out, kernel, config)
}
