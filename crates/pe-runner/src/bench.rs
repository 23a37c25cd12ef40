//! `pe bench train-step`: time forward + backward + optimizer step of a registry model on random
//! data, for side-by-side comparison with PyTorch eager (bench/train_step.py).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use pe_models::ModelConfig;

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::loss::cross_entropy;
use crate::optimizer::Optimizer;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Input side (ViTs need their own size).
    #[arg(long)]
    img_size: Option<i64>,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// libtorch intra-op threads (0 = default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Peak resident set size of this process in bytes (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = crate::device::resolve(&args.device)?;
    let mut config = pe_models::preset(&args.model).map_err(anyhow::Error::msg)?;
    let size = args.img_size.unwrap_or_else(|| config.default_img_size());
    if let ModelConfig::Vit(vit) = &mut config {
        // A ViT's position embedding fixes its input size: rebuild it for the requested one.
        vit.img_size = size;
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = config.init(vs.root());
    let optimizer_config = OptimizerConfig { name: OptimizerKind::Adamw, ..Default::default() };
    let mut optimizer = Optimizer::new(&vs, &optimizer_config)?;
    let images = Tensor::randn([args.batch, config.in_channels(), size, size], (Kind::Float, device));
    let labels = Tensor::randint(config.num_classes(), [args.batch], (Kind::Int64, device));
    let mut step = || -> Result<()> {
        let loss = cross_entropy(&model.forward_t(&images, true), &labels, 0.0);
        loss.backward();
        optimizer.step(1e-4)?;
        optimizer.zero_grad()?;
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let start = Instant::now();
    for _ in 0..args.steps {
        step()?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / args.steps as f64;
    let record = json!({"side": "rust", "model": args.model, "batch": args.batch, "img_size": size,
        "threads": tch::get_num_threads(), "ms_per_step": ms, "img_per_s": args.batch as f64 * 1e3 / ms,
        "peak_rss_mb": peak_rss_bytes().map(|b| b as f64 / 1048576.0)});
    println!("{record}");
    Ok(())
}
