//! pe-torch benchmark: fused vs per-tensor optimizer steps on resnet50's and deit_small's parameter
//! sets, and bf16-autocast vs fp32 (and channels_last vs contiguous) training steps of a small conv
//! net. CPU always; CUDA too when present.
//!
//! ```text
//! cargo run --release -p pe-torch --example torch_bench -- [--quick] [--json FILE]
//! ```
//! `--json FILE` writes the numbers for bench/torch/torch_bench.py, which measures PyTorch on the
//! same shapes and prints both side by side.
use std::time::Instant;

use pe_torch::memory_format::{convert_conv_weights_, to_channels_last};
use pe_torch::optim::{AdamW, AdamWConfig, Backend, Optimizer, ParamGroup, Sgd, SgdConfig};
use pe_torch::{autocast, cuda};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// torchvision resnet50's trainable parameter shapes (25,557,032 values).
fn resnet50_shapes() -> Vec<Vec<i64>> {
    let mut s = vec![vec![64, 3, 7, 7], vec![64], vec![64]];
    let mut inp = 64;
    for (width, blocks) in [(64, 3), (128, 4), (256, 6), (512, 3)] {
        for b in 0..blocks {
            let cin = if b == 0 { inp } else { 4 * width };
            s.extend([vec![width, cin, 1, 1], vec![width], vec![width]]);
            s.extend([vec![width, width, 3, 3], vec![width], vec![width]]);
            s.extend([vec![4 * width, width, 1, 1], vec![4 * width], vec![4 * width]]);
            if b == 0 {
                s.extend([vec![4 * width, inp, 1, 1], vec![4 * width], vec![4 * width]]);
            }
        }
        inp = 4 * width;
    }
    s.extend([vec![1000, 2048], vec![1000]]);
    s
}

/// timm deit_small_patch16_224's trainable parameter shapes (22,050,664 values).
fn deit_small_shapes() -> Vec<Vec<i64>> {
    let d = 384;
    let mut s = vec![vec![d, 3, 16, 16], vec![d], vec![1, 1, d], vec![1, 197, d]];
    for _ in 0..12 {
        s.extend([vec![d], vec![d], vec![3 * d, d], vec![3 * d], vec![d, d], vec![d]]);
        s.extend([vec![d], vec![d], vec![4 * d, d], vec![4 * d], vec![d, 4 * d], vec![d]]);
    }
    s.extend([vec![d], vec![d], vec![1000, d], vec![1000]]);
    s
}

fn numel(shapes: &[Vec<i64>]) -> i64 {
    shapes.iter().map(|s| s.iter().product::<i64>()).sum()
}

/// Parameters with gradients, split timm-style: ≥2-D weights decay, biases/norms/tokens do not.
fn make_params(shapes: &[Vec<i64>], device: Device) -> (Vec<Tensor>, Vec<Tensor>) {
    let (mut decay, mut no_decay) = (Vec::new(), Vec::new());
    for shape in shapes {
        let p = (Tensor::randn(shape.as_slice(), (Kind::Float, device)) * 0.02).set_requires_grad(true);
        (p.shallow_clone() * Tensor::randn_like(&p)).sum(Kind::Float).backward();
        if shape.len() >= 2 && shape[0] != 1 {
            decay.push(p)
        } else {
            no_decay.push(p)
        }
    }
    (decay, no_decay)
}

fn groups(decay: &[Tensor], no_decay: &[Tensor], lr: f64) -> Vec<ParamGroup> {
    let clone = |v: &[Tensor]| v.iter().map(Tensor::shallow_clone).collect();
    vec![ParamGroup::new(clone(decay), lr, 0.05), ParamGroup::new(clone(no_decay), lr, 0.0)]
}

/// Wall time of `f` in milliseconds over `iters` runs after `warmup` runs: (median, min). The minimum
/// is the better estimate on a machine shared with other work.
fn time_ms(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let _ = cuda::synchronize_device(device);
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            let _ = cuda::synchronize_device(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

struct Record {
    device: String,
    bench: String,
    variant: String,
    median_ms: f64,
    min_ms: f64,
}

fn optimizer_bench(device: Device, iters: usize, out: &mut Vec<Record>) {
    for (model, shapes) in [("resnet50", resnet50_shapes()), ("deit_small", deit_small_shapes())] {
        let (decay, no_decay) = make_params(&shapes, device);
        println!(
            "  {model}: {} tensors, {} parameters ({} decayed tensors)",
            shapes.len(),
            numel(&shapes),
            decay.len()
        );
        let mut row = Vec::new();
        for opt_name in ["adamw", "sgd"] {
            for backend in [Backend::Fused, Backend::PerTensor] {
                let g = groups(&decay, &no_decay, 1e-4);
                let mut opt: Box<dyn Optimizer> = match opt_name {
                    "adamw" => {
                        Box::new(AdamW::with_backend(g, AdamWConfig::default(), backend).expect("adamw"))
                    }
                    _ => Box::new(
                        Sgd::with_backend(g, SgdConfig { momentum: 0.9, nesterov: false }, backend)
                            .expect("sgd"),
                    ),
                };
                let (median_ms, min_ms) = time_ms(device, 3, iters, || opt.step().expect("step"));
                let variant =
                    format!("{opt_name}_{}", if backend == Backend::Fused { "fused" } else { "per_tensor" });
                row.push((variant.clone(), median_ms, min_ms));
                let bench = format!("optim_{model}");
                out.push(Record { device: format!("{device:?}"), bench, variant, median_ms, min_ms });
            }
        }
        for pair in row.chunks(2) {
            let ((fv, f, fmin), (_, p, pmin)) = (&pair[0], &pair[1]);
            println!(
                "    {fv:<14} {f:8.2} ms/step (min {fmin:7.2})   per-tensor {p:8.2} ms (min {pmin:7.2})   \
                 fused speed-up ×{:.2} (min ×{:.2})",
                p / f,
                pmin / fmin
            );
        }
    }
}

/// A small ResNet-like conv net for 32×32 inputs.
fn conv_net(vs: &nn::Path) -> impl ModuleT {
    let conv = |vs: nn::Path, i, o, stride| {
        nn::conv2d(vs, i, o, 3, nn::ConvConfig { stride, padding: 1, bias: false, ..Default::default() })
    };
    nn::seq_t()
        .add(conv(vs / "c1", 3, 64, 1))
        .add(nn::batch_norm2d(vs / "bn1", 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(conv(vs / "c2", 64, 128, 2))
        .add(nn::batch_norm2d(vs / "bn2", 128, Default::default()))
        .add_fn(|x| x.relu())
        .add(conv(vs / "c3", 128, 256, 2))
        .add(nn::batch_norm2d(vs / "bn3", 256, Default::default()))
        .add_fn(|x| x.relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(vs / "fc", 256, 10, Default::default()))
}

fn train_step_bench(device: Device, iters: usize, out: &mut Vec<Record>) {
    let batch = if device == Device::Cpu { 64 } else { 256 };
    let variants: [(&str, Option<Kind>, bool); 4] = [
        ("fp32", None, false),
        ("bf16_autocast", Some(Kind::BFloat16), false),
        ("fp32_channels_last", None, true),
        ("bf16_channels_last", Some(Kind::BFloat16), true),
    ];
    println!("  conv net (3 convs 64-256 ch + BN + fc), batch {batch}×3×32×32, fwd+bwd+fused AdamW:");
    let mut base = None;
    for (name, amp, channels_last) in variants {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let net = conv_net(&vs.root());
        if channels_last {
            convert_conv_weights_(&vs).expect("channels_last");
        }
        let mut opt =
            AdamW::new(vec![ParamGroup::new(vs.trainable_variables(), 1e-3, 0.0)], AdamWConfig::default())
                .expect("opt");
        let mut x = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
        if channels_last {
            x = to_channels_last(&x).expect("channels_last input");
        }
        let y = Tensor::randint(10, [batch], (Kind::Int64, device));
        let (median_ms, min_ms) = time_ms(device, 2, iters, || {
            opt.zero_grad().expect("zero_grad");
            let loss = {
                let _amp = amp.map(|k| autocast::autocast(device, k).expect("autocast"));
                net.forward_t(&x, true).cross_entropy_for_logits(&y)
            };
            loss.backward();
            opt.step().expect("step");
        });
        let (base_med, base_min) = *base.get_or_insert((median_ms, min_ms));
        println!(
            "    {name:<20} {median_ms:8.2} ms/step (min {min_ms:7.2})   ×{:.2} vs fp32 (min ×{:.2})",
            base_med / median_ms,
            base_min / min_ms
        );
        let (device, bench, variant) = (format!("{device:?}"), "train_step_convnet".into(), name.into());
        out.push(Record { device, bench, variant, median_ms, min_ms });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    assert_eq!(numel(&resnet50_shapes()), 25_557_032, "resnet50 shapes");
    assert_eq!(numel(&deit_small_shapes()), 22_050_664, "deit_small shapes");
    tch::manual_seed(0);

    let mut devices = vec![Device::Cpu];
    if cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    println!(
        "pe-torch bench: libtorch threads {}, CUDA devices {}",
        tch::get_num_threads(),
        cuda::device_count().unwrap_or(0)
    );
    let mut records = Vec::new();
    for device in devices {
        let (opt_iters, step_iters) = match (device, quick) {
            (_, true) => (3, 3),
            (Device::Cpu, false) => (10, 10),
            _ => (50, 30),
        };
        println!("{device:?}: optimizer step, median of {opt_iters}");
        optimizer_bench(device, opt_iters, &mut records);
        println!("{device:?}: training step, median of {step_iters}");
        train_step_bench(device, step_iters, &mut records);
        if let Device::Cuda(i) = device {
            let peak = cuda::max_memory_allocated(i).unwrap_or(0);
            println!("  CUDA peak memory allocated: {:.1} MiB", peak as f64 / (1 << 20) as f64);
        }
    }
    if let Some(path) = json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({"device": r.device, "bench": r.bench, "variant": r.variant,
                "median_ms": r.median_ms, "min_ms": r.min_ms})
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&rows).expect("json")).expect("write json");
        println!("wrote {path}");
    }
}
