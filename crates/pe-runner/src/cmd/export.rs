//! `pe export`: a trained model as a file other programs run: TorchScript traced here (no Python
//! model definition needed to load it), safetensors in eval form, or ONNX through PyTorch's
//! exporter. Beside the file, `FILE.json` says what it takes and gives: the model, the class
//! names, the input and output shapes, and the eval preprocessing of its recipe.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tch::{nn::ModuleT, CModule, Device, Kind, Tensor};

use pe_data::transforms::resize::Interpolation;
use pe_models::{weights, ModelConfig};

use crate::train::trained::{Loaded, Trained};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A traced TorchScript module (`torch.jit.load`, libtorch's `torch::jit::load`).
    Torchscript,
    /// ONNX through PyTorch's exporter (runs `python -m pe_models.export`).
    Onnx,
    /// The weights as safetensors (at the exported size), for `pe_models`, timm or torchvision.
    Safetensors,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run folder (its best checkpoint, else last), a checkpoint folder, or a safetensors file
    /// (with --model).
    #[arg(value_name = "RUN_DIR|CHECKPOINT|FILE")]
    pub source: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to write; `FILE.json` is written beside it.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Export the checkpoint's EMA weights.
    #[arg(long)]
    pub ema: bool,
    /// The input side to export for (default: the recipe's `data.img_size`). A ViT's position
    /// embedding is resampled to it as `model.init` does (timm's `resample_abs_pos_embed`).
    #[arg(long, value_name = "N")]
    pub img_size: Option<i64>,
    /// `dynamic` (any batch; the default) or a fixed batch size.
    #[arg(long, default_value = "dynamic", value_parser = parse_batch)]
    pub batch: Batch,
    /// Registry model of a bare safetensors file (a checkpoint knows its own).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// TorchScript: keep the traced module as it is instead of freezing it. Freezing folds each
    /// BatchNorm into its convolution (faster), but stores a PE model's tied `W` once per use
    /// (larger file); unfrozen, the file keeps the ties.
    #[arg(long)]
    pub no_freeze: bool,
    /// The Python that runs the ONNX exporter (default: $PE_PYTHON, else `python3`).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Dynamic,
    Fixed(i64),
}

fn parse_batch(text: &str) -> Result<Batch, String> {
    match text {
        "dynamic" => Ok(Batch::Dynamic),
        n => match n.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(Batch::Fixed(n)),
            _ => Err(format!("expected `dynamic` or a batch size >= 1, got {n:?}")),
        },
    }
}

impl Batch {
    /// The batch traced with: 2 for a dynamic batch, so no size-1 special case is recorded.
    fn traced(self) -> i64 {
        match self {
            Batch::Dynamic => 2,
            Batch::Fixed(n) => n,
        }
    }

    fn as_json(self) -> serde_json::Value {
        match self {
            Batch::Dynamic => serde_json::Value::Null,
            Batch::Fixed(n) => json!(n),
        }
    }
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.format == Format::Onnx {
        return export_onnx(&args);
    }
    let source = Trained::resolve(&args.source, args.ema, args.model.as_deref(), &[])?;
    let img_size = args.img_size.or(source.recipe.as_ref().map(|c| c.data.img_size as i64));
    let img_size = img_size.unwrap_or_else(|| source.model.default_img_size());
    let Loaded { vs, model, config: model_config, adapted } = source.load(img_size, Device::Cpu)?;
    for line in adapted {
        println!("{line}");
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let example = Tensor::randn([args.batch.traced(), 3, img_size, img_size], (Kind::Float, Device::Cpu));
    match args.format {
        Format::Torchscript => {
            let traced = tch::no_grad(|| {
                CModule::create_by_tracing("PeModel", "forward", &[example.shallow_clone()], &mut |inputs| {
                    vec![model.forward_t(&inputs[0], false)]
                })
            })?;
            let traced_file = args.out.with_extension("traced.tmp");
            traced.save(&traced_file).with_context(|| format!("writing {}", traced_file.display()))?;
            let written = if args.no_freeze {
                traced_file
            } else {
                let frozen_file = args.out.with_extension("frozen.tmp");
                pe_torch::jit::freeze_file(&traced_file, &frozen_file)?;
                std::fs::remove_file(&traced_file)?;
                frozen_file
            };
            check_traced(&written, &model, args.batch, img_size)?;
            std::fs::rename(&written, &args.out)
                .with_context(|| format!("writing {}", args.out.display()))?;
        }
        Format::Safetensors => weights::save(&vs, &args.out)?,
        Format::Onnx => unreachable!("exported by Python above"),
    }
    let sidecar = sidecar_path(&args.out);
    let description = describe(&args, &source, &model_config, img_size)?;
    pe_data::atomic_file::write(&sidecar, serde_json::to_string_pretty(&description)? + "\n")
        .with_context(|| format!("writing {}", sidecar.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({:.1} MB) and {}", args.out.display(), bytes as f64 / 1e6, sidecar.display());
    Ok(())
}

/// `FILE.json` beside `FILE`.
fn sidecar_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Loads the file to publish back and checks it against the model, at another batch size when
/// the batch is dynamic: a trace that recorded a size where it should not would fail here.
fn check_traced(file: &Path, model: &impl ModuleT, batch: Batch, img_size: i64) -> Result<()> {
    let n = match batch {
        Batch::Dynamic => 3,
        Batch::Fixed(n) => n,
    };
    let input = Tensor::randn([n, 3, img_size, img_size], (Kind::Float, Device::Cpu));
    let loaded = CModule::load(file).with_context(|| format!("reading back {}", file.display()))?;
    let (theirs, ours) = tch::no_grad(|| -> Result<_> {
        Ok((loaded.forward_ts(&[&input])?, model.forward_t(&input, false)))
    })?;
    // Relative to the logits' scale: folding BatchNorm changes the rounding, and random weights
    // under fresh statistics can give a deep ResNet logits of 1e9.
    let scale = ours.abs().max().double_value(&[]).max(1.0);
    let difference = (theirs - ours).abs().max().double_value(&[]) / scale;
    if difference.is_nan() || difference > 1e-4 {
        bail!(
            "{}: the exported module differs from the model by {difference:e} (relative) at batch {n}",
            file.display()
        );
    }
    Ok(())
}

/// What `FILE.json` holds (the same keys `python -m pe_models.export` writes for ONNX).
fn describe(
    args: &ExportArgs,
    source: &Trained,
    model: &ModelConfig,
    img_size: i64,
) -> Result<serde_json::Value> {
    let format = match args.format {
        Format::Torchscript => "torchscript",
        Format::Safetensors => "safetensors",
        Format::Onnx => "onnx",
    };
    let data = source.recipe.as_ref().map(|config| config.data.clone()).unwrap_or_default();
    let interpolation = match data.interpolation {
        Interpolation::Bicubic => "bicubic",
        // `random` picks a filter per training image only; evaluation resizes bilinearly.
        Interpolation::Bilinear | Interpolation::Random => "bilinear",
    };
    let file = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(json!({
        "format": format,
        "file": file,
        "frozen": args.format == Format::Torchscript && !args.no_freeze,
        "model": serde_json::to_value(model)?,
        "classes": &source.classes,
        "input": {
            "name": "input",
            "shape": [args.batch.as_json(), 3, img_size, img_size],
            "dtype": "float32",
            "layout": "NCHW",
            "normalised": true,
        },
        "output": { "name": "logits", "shape": [args.batch.as_json(), model.num_classes()] },
        "preprocessing": {
            "input_size": [3, img_size, img_size],
            "resize_size": (img_size as f64 / data.crop_pct).floor() as i64,
            "crop_pct": data.crop_pct,
            "crop_mode": "center",
            "interpolation": interpolation,
            "mean": data.mean,
            "std": data.std,
        },
        "source": { "weights": source.weights.display().to_string(), "ema": args.ema },
    }))
}

/// ONNX: libtorch (C++) has no ONNX exporter; PyTorch's is Python, so the run is handed to
/// `python -m pe_models.export`, which builds the same model from `python/pe_models` (tested
/// against this one), exports it and checks the file with onnxruntime.
fn export_onnx(args: &ExportArgs) -> Result<()> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("PE_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let mut command = Command::new(&python);
    command.args(["-m", "pe_models.export"]).arg(&args.source).arg("--out").arg(&args.out);
    if args.ema {
        command.arg("--ema");
    }
    if let Some(size) = args.img_size {
        command.arg("--img-size").arg(size.to_string());
    }
    if let Some(name) = &args.model {
        command.arg("--model").arg(name);
    }
    command.arg("--batch").arg(match args.batch {
        Batch::Dynamic => "dynamic".to_string(),
        Batch::Fixed(n) => n.to_string(),
    });
    let status = command.status().with_context(|| {
        format!(
            "starting {} for the ONNX export (PyTorch's exporter is Python: install python/pe_models, \
             as `make setup` does, or name an interpreter with --python / PE_PYTHON)",
            python.display()
        )
    })?;
    if !status.success() {
        bail!("the ONNX export ({} -m pe_models.export) failed: {status}", python.display());
    }
    Ok(())
}
