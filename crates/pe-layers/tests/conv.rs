//! ResNet convolutions over tiny maps run as matrix products: they must equal libtorch's own
//! convolution (values and both gradients), keep the input's memory format, and under bf16 autocast
//! stay within bf16 rounding of the fp32 result.
mod common;

use common::*;
use pe_layers::conv::{per_pixel, per_pixel_transposed, GEMM_MAX_PIXELS};
use pe_layers::{Conv, StageShared};
use pe_torch::autocast::autocast;
use pe_torch::memory_format::{is_channels_last, to_channels_last};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// libtorch's convolution with "same" padding: the reference the matrix forms must reproduce.
fn reference(xs: &Tensor, weight: &Tensor, stride: i64) -> Tensor {
    let pad = weight.size()[2] / 2;
    xs.conv2d(weight, None::<Tensor>, [stride, stride], [pad, pad], [1, 1], 1)
}

/// `xs` as a fresh leaf in NCHW or channels-last layout.
fn input(shape: &[i64], channels_last: bool) -> Tensor {
    let xs = randn(shape);
    let xs = if channels_last { to_channels_last(&xs).unwrap() } else { xs };
    xs.set_requires_grad(true)
}

/// Output, input gradient and weight gradient of `f` for one random upstream gradient.
fn run(xs: &Tensor, weight: &Tensor, f: impl Fn(&Tensor) -> Tensor, upstream: &Tensor) -> [Tensor; 3] {
    clear_grad(xs);
    clear_grad(weight);
    let out = f(xs);
    (&out * upstream).sum(Kind::Double).backward();
    [out.detach(), xs.grad().copy(), weight.grad().copy()]
}

fn clear_grad(t: &Tensor) {
    let mut grad = t.grad();
    if grad.defined() {
        let _ = grad.zero_();
    }
}

fn assert_same(what: &str, got: &[Tensor; 3], want: &[Tensor; 3]) {
    for (name, g, w) in [("output", &got[0], &want[0]), ("input grad", &got[1], &want[1])] {
        assert_close(g, w, 1e-10, &format!("{what}: {name}"));
    }
    assert_close(&got[2], &want[2], 1e-10, &format!("{what}: weight grad"));
}

#[test]
fn a_conv_over_a_tiny_map_equals_libtorchs_convolution() {
    // (kernel, stride, map side): 1×1 at stride 1 and 2 (odd sides included) up to the GEMM limit,
    // a 3×3 over a 1×1 map (only its centre tap meets a pixel) at stride 1 and 2, and maps past the
    // limit or a 3×3 over a 2×2 map, which stay libtorch convolutions.
    let cases = [(1, 1, 1), (1, 1, 2), (1, 1, 4), (1, 2, 2), (1, 2, 3), (1, 2, 7), (1, 1, 5), (3, 1, 1)];
    let cases = cases.iter().chain(&[(3, 2, 1), (3, 1, 2), (3, 2, 4), (7, 2, 1)]);
    for &(kernel, stride, side) in cases {
        for channels_last in [false, true] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let conv = Conv::new(vs.root() / "conv", 6, 5, kernel, stride);
            vs.set_kind(Kind::Double);
            let xs = input(&[3, 6, side, side], channels_last);
            let out_side = (side - 1) / stride + 1;
            let upstream = randn(&[3, 5, out_side, out_side]);
            let what = format!(
                "{kernel}×{kernel} stride {stride} over {side}×{side}, channels_last {channels_last}"
            );
            let got = run(&xs, &conv.ws, |x| conv.forward(x), &upstream);
            let want = run(&xs, &conv.ws, |x| reference(x, &conv.ws, stride), &upstream);
            assert_same(&what, &got, &want);
            if out_side * out_side > 1 {
                assert_eq!(is_channels_last(&got[0]).unwrap(), channels_last, "{what}: layout kept");
            }
        }
    }
}

#[test]
fn a_shared_w_maps_every_pixel_like_its_1x1_convolutions() {
    let (width, channels) = (3, 8);
    for side in [1, 2, 4, 5, 8] {
        for channels_last in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let shared = StageShared::new(&vs.root(), width, channels);
            let w = shared.weight.to_kind(Kind::Double).detach().set_requires_grad(true);
            let shared = StageShared { weight: w.shallow_clone() };
            let what = format!("{side}×{side}, channels_last {channels_last}");
            let xs = input(&[2, channels, side, side], channels_last);
            let up = randn(&[2, width, side, side]);
            let got = run(&xs, &w, |x| shared.reduce(x), &up);
            let want = run(&xs, &w, |x| reference(x, &w.view([width, channels, 1, 1]), 1), &up);
            assert_same(&format!("W x over {what}"), &got, &want);

            let hs = input(&[2, width, side, side], channels_last);
            let up = randn(&[2, channels, side, side]);
            let got = run(&hs, &w, |h| shared.expand(h), &up);
            let want = run(&hs, &w, |h| reference(h, &w.tr().reshape([channels, width, 1, 1]), 1), &up);
            assert_same(&format!("Wᵀ x over {what}"), &got, &want);
            if side > 1 {
                assert_eq!(is_channels_last(&got[0]).unwrap(), channels_last, "{what}: layout kept");
            }
        }
    }
}

#[test]
fn the_per_pixel_products_hold_past_the_gemm_limit_too() {
    // The products are exact at any size; the limit only chooses between them and libtorch's conv.
    let side = 5;
    assert!(side * side > GEMM_MAX_PIXELS);
    let w = randn(&[4, 6]);
    for channels_last in [false, true] {
        let xs = input(&[2, 6, side, side], channels_last);
        assert_close(&per_pixel(&xs, &w), &reference(&xs, &w.view([4, 6, 1, 1]), 1), 1e-10, "W x");
        let hs = input(&[2, 4, side, side], channels_last);
        let want = reference(&hs, &w.tr().reshape([6, 4, 1, 1]), 1);
        assert_close(&per_pixel_transposed(&hs, &w), &want, 1e-10, "Wᵀ x");
    }
}

/// Deterministic noise in [-1, 1) of `shape` (the `fract(sin(i) · 43758.5453)` hash): no draw from
/// libtorch's generator, which the tests of this binary share while running in parallel.
fn pattern(shape: &[i64], phase: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let i = Tensor::arange(n, (Kind::Double, Device::Cpu)) + phase;
    ((i.sin() * 43758.5453).frac() * 2.0 - 1.0).to_kind(Kind::Float).reshape(shape)
}

#[test]
fn under_bf16_autocast_the_uses_of_a_shared_w_add_their_gradients_in_fp32() {
    // Eight uses of W per step: their gradients must add up in fp32, leaving the W gradient as close
    // to fp32 as the same blocks written with 1×1 convs get (a cast per use). Through autocast's cast
    // cache they would add up in bf16: 3.4e-3 from fp32 instead of 1.1e-3 here.
    let vs = nn::VarStore::new(Device::Cpu);
    let shared = StageShared::new(&vs.root(), 16, 64);
    copy(&shared.weight, &(pattern(&[16, 64], 0.3) * 0.2));
    let xs = to_channels_last(&pattern(&[32, 64, 2, 2], 1.1)).unwrap();
    let upstream = pattern(&[32, 64, 2, 2], 2.7);
    let gemm = |h: &Tensor| shared.expand(&shared.reduce(h).relu());
    let w = &shared.weight;
    let conv_blocks = |h: &Tensor| {
        let reduced = reference(h, &w.view([16, 64, 1, 1]), 1).relu();
        reference(&reduced, &w.tr().reshape([64, 16, 1, 1]), 1)
    };
    let w_grad = |block: &dyn Fn(&Tensor) -> Tensor, amp: bool| {
        clear_grad(w);
        let out = {
            let _amp = amp.then(|| autocast(Device::Cpu, Kind::BFloat16).unwrap());
            let mut h = xs.shallow_clone();
            for _ in 0..4 {
                h = &h + block(&h);
            }
            h
        };
        (out * &upstream).sum(Kind::Float).backward();
        w.grad().copy()
    };
    let fp32 = w_grad(&gemm, false);
    let rel = |g: &Tensor| (g - &fp32).norm().double_value(&[]) / fp32.norm().double_value(&[]);
    let (products, convs) = (rel(&w_grad(&gemm, true)), rel(&w_grad(&conv_blocks, true)));
    assert!(products > 0.0, "autocast ran the products in bf16");
    assert!(products < 1.5 * convs, "bf16 W gradient {products:.3e} from fp32 (1×1 convs: {convs:.3e})");
    {
        let _amp = autocast(Device::Cpu, Kind::BFloat16).unwrap();
        assert_eq!(shared.reduce(&xs).kind(), Kind::BFloat16, "W x runs in bf16");
    }
    assert_eq!(w.grad().kind(), Kind::Float, "W's gradient stays fp32");
}
