//! `pe bench`: times the training step engine (forward + backward + optimizer step, with the
//! chosen autocast and memory format) on a registry model and random data, for side-by-side
//! comparison with PyTorch eager (bench/train_step.py); with `--infer`, the model's inference
//! forward instead (eval mode, no autograd), beside PyTorch eager and ONNX Runtime (bench/infer.py).
//!
//! Each step is timed on its own and the median is reported with the spread, so one slow step
//! (another process, a page-cache flush) does not move the result. With `--serve` the steps are
//! run one per line read from stdin, so a driver can interleave them with PyTorch's steps and both
//! sides see the same machine at the same moments.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use pe_models::ModelConfig;

use crate::config::{
    Amp, DeviceChoice, DistBackend, DistillConfig, DistillKind, OptimizerConfig, OptimizerKind,
};
use crate::train::amp::Precision;
use crate::train::dist::Dist;
use crate::train::step_engine::{EngineConfig, StepEngine, Targets, CUDA_GRAPH_WARMUP_STEPS};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A registry model as `pe summary` lists it (e.g. resnet50_pe, vit_pe_small).
    #[arg(long)]
    model: String,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Input side (ViTs need their own size).
    #[arg(long)]
    img_size: Option<i64>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first (allocator, cuDNN autotuning, lazy initialisation).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// libtorch intra-op threads (0 = default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// cpu, cuda, cuda:N or auto (CUDA when libtorch sees a GPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Autocast dtype, as `train.amp`: off, bf16 or fp16.
    #[arg(long, default_value = "off")]
    amp: String,
    /// Conv weights and inputs in channels_last, as `train.channels_last`.
    #[arg(long)]
    channels_last: bool,
    /// Capture the step into a CUDA graph and time its replays, as `train.cuda_graph` (CUDA only;
    /// the warm-up then also covers the eager warm-up steps and the capture).
    #[arg(long)]
    cuda_graph: bool,
    /// Train with this teacher, as `distill.teacher` (a run or checkpoint folder, or a weights
    /// file with --teacher-model): the step then includes the teacher's forward.
    #[arg(long, conflicts_with = "infer")]
    teacher: Option<std::path::PathBuf>,
    /// The teacher's registry model, for a bare weights file (`distill.teacher_model`).
    #[arg(long, requires = "teacher")]
    teacher_model: Option<String>,
    /// How the teacher's logits enter the loss (`distill.kind`).
    #[arg(long, value_enum, default_value = "hard")]
    distill: DistillKind,
    /// Time inference (eval-mode forward without autograd) instead of a training step; with
    /// `--weights`, of those weights (a file `pe forward --save-weights` or a run wrote).
    #[arg(long)]
    infer: bool,
    /// Weights for `--infer` (default: the model's fresh initialisation, seed 0).
    #[arg(long, requires = "infer")]
    weights: Option<std::path::PathBuf>,
    /// After the warm-up, print `{"ready": true}`, then run one step per line read from stdin and
    /// print `{"ms": ...}` after each; the summary follows at end of input.
    #[arg(long)]
    serve: bool,
    /// The summary: a table to read, or one JSON object for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

/// The `q` quantile (nearest rank) of per-step times; `sorted` is non-empty and ascending.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The summary for a person: what was timed, and the numbers.
fn table(r: &serde_json::Value) -> String {
    let layout = if r["channels_last"] == true { "channels_last" } else { "contiguous" };
    let graph = if r["cuda_graph"] == true { ", CUDA graph" } else { "" };
    let teacher = match r["teacher"].as_str() {
        Some(name) => format!(", teacher {name} ({})", r["distill"].as_str().unwrap_or_default()),
        None => String::new(),
    };
    let mut text = format!(
        "pe bench {}: batch {} at {}×{}, amp {}, {layout}{graph}{teacher}, {} process(es) × {} thread(s)\n",
        r["model"].as_str().unwrap_or_default(),
        r["batch"],
        r["img_size"],
        r["img_size"],
        r["amp"].as_str().unwrap_or_default(),
        r["processes"],
        r["threads"]
    );
    let number = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    text += &format!(
        "  ms/step    {:.1} median ({:.1}–{:.1}, 10th–90th percentile) over {} steps\n",
        number("ms_per_step"),
        number("ms_p10"),
        number("ms_p90"),
        r["steps"]
    );
    text += &format!("  img/s      {:.1}\n", number("img_per_s"));
    if let Some(share) = r["allreduce_hidden_share"].as_f64() {
        text += &format!("  all-reduce hidden behind backward  {:.0} %\n", 100.0 * share);
    }
    if let Some(mb) = r["peak_rss_mb"].as_f64() {
        text += &format!("  peak RSS   {mb:.0} MB\n");
    }
    if let Some(mb) = r["cuda_peak_mb"].as_f64() {
        text += &format!("  CUDA peak  {mb:.0} MB\n");
    }
    text
}

/// Peak resident set size of this process in bytes (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak CUDA memory the caching allocator handed out on `device` (what PyTorch's
/// `torch.cuda.max_memory_allocated` reports), in MiB; `None` on the CPU.
fn cuda_peak_mb(device: Device) -> Result<Option<f64>> {
    Ok(match device {
        Device::Cuda(index) => Some(pe_torch::cuda::max_memory_allocated(index)? as f64 / 1048576.0),
        _ => None,
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = args.device.resolve()?;
    if device.is_cuda() {
        // As `pe train` does: cuDNN picks the fastest convolution algorithms for the fixed shapes.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut model = pe_models::preset(&args.model).map_err(anyhow::Error::msg)?;
    let size = args.img_size.unwrap_or_else(|| model.default_img_size());
    if let ModelConfig::Vit(vit) = &mut model {
        // A ViT's position embedding fixes its input size: rebuild it for the requested one.
        vit.img_size = size;
    }
    let amp: Amp = serde_json::from_value(json!(args.amp))
        .map_err(|_| anyhow::anyhow!("--amp {:?}: expected off, bf16 or fp16", args.amp))?;
    tch::manual_seed(0);
    if args.infer {
        return bench_inference(&args, model, size, amp, device);
    }
    let config = EngineConfig {
        optimizer: OptimizerConfig { name: OptimizerKind::Adamw, ..Default::default() },
        amp,
        channels_last: args.channels_last,
        ema_decay: 0.0,
        accum_steps: 1,
        label_smoothing: 0.0,
        cuda_graph: args.cuda_graph,
        distill: args.teacher.as_ref().map(|teacher| DistillConfig {
            teacher: teacher.clone(),
            teacher_model: args.teacher_model.clone(),
            teacher_ema: false,
            teacher_img_size: 0,
            kind: args.distill,
            alpha: 0.5,
            tau: 1.0,
        }),
        img_size: size,
        model,
    };
    // Under `pe launch`/torchrun every rank runs this bench: the engine then reduces gradients as
    // in training and rank 0 reports the whole world's throughput.
    let dist = Dist::from_env(DistBackend::Auto, Duration::from_secs(300), device, &format!("{args:?}"))?;
    let device = dist.device(device);
    let mut engine = StepEngine::new(&config, device)?;
    dist.join_engine(&mut engine)?;
    let images = Tensor::randn([args.batch, config.model.in_channels(), size, size], (Kind::Float, device));
    let labels =
        Targets::Labels(Tensor::randint(config.model.num_classes(), [args.batch], (Kind::Int64, device)));
    // With a graph, the eager warm-up steps and the capture step are never timed.
    let warmup = if args.cuda_graph { args.warmup.max(CUDA_GRAPH_WARMUP_STEPS + 1) } else { args.warmup };
    let mut times = timed(&args, warmup, || {
        // As in training, the loss stays on the device (no sync inside the timed step).
        let _loss = engine.step(&images, &labels, 1e-4, false)?;
        pe_torch::cuda::synchronize_device(device)?;
        Ok(())
    })?;
    // DDP's timing is read at the next prepare_for_forward after a synchronised backward.
    let _loss = engine.step(&images, &labels, 1e-4, false)?;
    if !engine.losses_were_finite()? {
        bail!("the loss became NaN or infinite during the benchmark");
    }
    let hidden = engine.allreduce_hidden_share()?;
    if !dist.is_main() {
        return Ok(());
    }
    times.sort_by(f64::total_cmp);
    let median = quantile(&times, 0.5);
    let images_per_step = (args.batch as usize * dist.world) as f64;
    let record = json!({"side": "rust", "model": args.model, "batch": args.batch, "img_size": size,
        "amp": args.amp, "channels_last": args.channels_last, "cuda_graph": args.cuda_graph, "processes": dist.world,
        "threads": tch::get_num_threads(), "steps": times.len(), "ms_per_step": median,
        "ms_p10": quantile(&times, 0.1), "ms_p90": quantile(&times, 0.9),
        "img_per_s": images_per_step * 1e3 / median, "allreduce_hidden_share": hidden,
        "peak_rss_mb": peak_rss_bytes().map(|b| b as f64 / 1048576.0),
        "cuda_peak_mb": cuda_peak_mb(device)?,
        "teacher": args.teacher.as_ref().map(|t| t.display().to_string()),
        "distill": args.teacher.as_ref().map(|_| args.distill)});
    report(&args, &record);
    Ok(())
}

fn report(args: &BenchArgs, record: &serde_json::Value) {
    match args.format {
        Format::Json => println!("{record}"),
        Format::Table => print!("{}", table(record)),
    }
}

/// Runs `step` `warmup` times untimed, then times it `--steps` times (or once per line of stdin
/// with `--serve`); returns the times in ms.
fn timed(args: &BenchArgs, warmup: usize, mut step: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut time_one = || -> Result<f64> {
        let start = Instant::now();
        step()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..warmup {
        time_one()?;
    }
    let mut times = Vec::new();
    if args.serve {
        println!("{}", json!({"ready": true}));
        for line in std::io::stdin().lock().lines() {
            line?;
            let ms = time_one()?;
            println!("{}", json!({"ms": ms}));
            times.push(ms);
        }
    } else {
        for _ in 0..args.steps {
            times.push(time_one()?);
        }
    }
    if times.is_empty() {
        bail!("no step was timed (--steps 0, or no line on stdin with --serve)");
    }
    Ok(times)
}

/// `--infer`: the model's eval-mode forward without autograd, under the chosen autocast, on a
/// fixed random batch.
fn bench_inference(args: &BenchArgs, model: ModelConfig, size: i64, amp: Amp, device: Device) -> Result<()> {
    let vs = tch::nn::VarStore::new(device);
    let network = model.init(vs.root())?;
    if let Some(file) = &args.weights {
        pe_models::weights::load(&vs, file)?;
    }
    let precision = Precision { amp, channels_last: args.channels_last };
    if args.channels_last {
        pe_torch::memory_format::convert_conv_weights_(&vs)?;
    }
    let images = precision
        .input(Tensor::randn([args.batch, model.in_channels(), size, size], (Kind::Float, device)))?;
    let mut times = tch::no_grad(|| {
        timed(args, args.warmup, || {
            let _autocast = precision.autocast(device)?;
            let _logits = network.forward_t(&images, false);
            pe_torch::cuda::synchronize_device(device)?;
            Ok(())
        })
    })?;
    times.sort_by(f64::total_cmp);
    let median = quantile(&times, 0.5);
    let record = json!({"side": "rust", "mode": "infer", "model": args.model, "batch": args.batch, "img_size": size,
        "amp": args.amp, "channels_last": args.channels_last, "cuda_graph": false, "processes": 1,
        "threads": tch::get_num_threads(), "steps": times.len(), "ms_per_step": median,
        "ms_p10": quantile(&times, 0.1), "ms_p90": quantile(&times, 0.9),
        "img_per_s": args.batch as f64 * 1e3 / median,
        "peak_rss_mb": peak_rss_bytes().map(|b| b as f64 / 1048576.0),
        "cuda_peak_mb": cuda_peak_mb(device)?});
    report(args, &record);
    Ok(())
}
