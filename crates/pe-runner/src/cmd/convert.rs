//! `pe convert`: a trained baseline turned into its PE twin (the method is in
//! `pe_models::convert`), written where `model.init` takes it, with what each tie cost and how
//! far the logits moved on the run's validation images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use pe_models::convert::{self, ConvertError, Method, TiedMatrix, Weights};
use pe_models::pretrained::{self, Selection};
use pe_models::{Model, ModelConfig};

use crate::cmd::eval::validation_loader;
use crate::config::ExperimentConfig;
use crate::train::amp::Precision;
use crate::train::batch::{to_device, Normalizer};
use crate::train::evaluate::eval_logits;
use crate::train::trained::{at_img_size, Trained};
use crate::train::weight_average::TrainingBatches;

/// The weights file in the output folder.
pub const WEIGHTS: &str = "model.safetensors";

/// Why `pe convert` refuses its source (exit code 2: nothing was written).
#[derive(Debug, thiserror::Error)]
#[error("converting {weights} to {to}: {reason}")]
pub struct ConvertRefusal {
    weights: String,
    to: String,
    reason: ConvertError,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The trained baseline: a run folder (its best checkpoint, else last), a checkpoint folder, or
    /// a safetensors file with --model.
    #[arg(value_name = "RUN|CHECKPOINT|FILE")]
    pub source: PathBuf,
    /// The PE twin to build, a registry name (`pe summary` lists them), e.g. `vit_pe_mini`.
    #[arg(long, value_name = "MODEL")]
    pub to: String,
    /// The folder to write: `model.safetensors` (for `model.init`), `convert.json`, `convert.md`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// `naive` averages each tied pair; `symmetric` first moves the baseline along its exact
    /// symmetries (per-head rotations, per-unit scales, channel permutations) to bring the pairs together.
    #[arg(long, default_value = "symmetric", value_name = "naive|symmetric")]
    pub method: Method,
    /// The registry model of a bare weights file (a run knows its own).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Convert the checkpoint's EMA weights.
    #[arg(long)]
    pub ema: bool,
    /// Override a key of the run's recipe (e.g. `--set data.root=...` for the validation images).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Validation images on which the baseline's and the twin's logits are compared (0: skip;
    /// needs the run's recipe).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub images: usize,
    /// Measure the twin's BatchNorm statistics again on this many batches of the run's training
    /// data (its training transform, in train mode): the tie moves every activation a BatchNorm
    /// normalises, and the baseline's statistics no longer describe them (0: keep them; models
    /// without BatchNorm skip this).
    #[arg(long, default_value_t = 100, value_name = "BATCHES")]
    pub recompute_bn: usize,
    /// What stdout shows (the folder always gets both convert.md and convert.json).
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A summary: the mean error per kind of tie and the logit comparison.
    Text,
    /// The full report as Markdown tables.
    Markdown,
    /// The full report as one JSON document.
    Json,
}

/// Everything `pe convert` found, as `convert.json` holds it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: String,
    pub to: String,
    pub method: String,
    pub weights: String,
    pub tied: Vec<TiedMatrix>,
    pub notes: Vec<String>,
    /// Training batches the twin's BatchNorm statistics were measured on (0: the baseline's kept).
    pub batch_norm_batches: usize,
    pub logits: Option<LogitCheck>,
}

/// The twin against the baseline on validation images, without any training.
#[derive(Debug, Serialize)]
pub struct LogitCheck {
    pub images: usize,
    pub baseline_top1: f64,
    pub converted_top1: f64,
    /// Images where the twin's top class is the baseline's (%).
    pub agreement: f64,
    /// `‖z_twin − z‖ / ‖z‖` over all the logits.
    pub relative_change: f64,
    /// The same for the baseline after the symmetry moves alone (exact: ~1e-7; the GELU MLP's
    /// scales are approximate), symmetric method only.
    pub aligned_relative_change: Option<f64>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let trained = Trained::resolve(&args.source, args.ema, args.model.as_deref(), &args.overrides)?;
    let target = twin_config(&trained.model, &args.to)?;
    let weights = pretrained::read(&trained.weights)?;
    let mut conversion = convert::convert(&trained.model, &target, convert::share(&weights), args.method)
        .map_err(|reason| ConvertRefusal {
            weights: trained.weights.display().to_string(),
            to: args.to.clone(),
            reason,
        })?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let file = args.out.join(WEIGHTS);
    let (vs, twin) = build(&target, conversion.weights, &file)?;
    let batch_norm_batches = match (&trained.recipe, args.recompute_bn) {
        (Some(recipe), batches) if batches > 0 => {
            TrainingBatches::open(recipe, batches, Device::Cpu)?.recompute_bn(&twin, &vs)?
        }
        _ => 0,
    };
    pe_models::weights::save(&vs, &file)?;

    let logits = match (&trained.recipe, args.images) {
        (_, 0) => None,
        (None, _) => {
            eprintln!(
                "note: a bare weights file has no recipe: no logit comparison and no BatchNorm statistics measured (name the run folder)"
            );
            None
        }
        (Some(recipe), limit) => {
            Some(compare(&trained, recipe, &target, &file, conversion.aligned.take(), limit)?)
        }
    };
    let report = Report {
        source: args.source.display().to_string(),
        to: args.to.clone(),
        method: args.method.to_string(),
        weights: file.display().to_string(),
        tied: conversion.tied,
        notes: conversion.notes,
        batch_norm_batches,
        logits,
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    pe_data::atomic_file::write(&args.out.join("convert.json"), &json)?;
    pe_data::atomic_file::write(&args.out.join("convert.md"), markdown(&report))?;
    match args.format {
        ReportFormat::Text => print!("{}", summary(&report)),
        ReportFormat::Markdown => print!("{}", markdown(&report)),
        ReportFormat::Json => print!("{json}"),
    }
    Ok(())
}

/// The registry's `name` as the twin of `baseline`: its classes and input size, so the baseline's
/// head and position embedding carry over.
fn twin_config(baseline: &ModelConfig, name: &str) -> Result<ModelConfig> {
    let preset = pe_models::preset(name).map_err(anyhow::Error::msg)?;
    Ok(match (baseline, preset) {
        (ModelConfig::Vit(from), ModelConfig::Vit(to)) => ModelConfig::Vit(pe_models::VitConfig {
            num_classes: from.num_classes,
            img_size: from.img_size,
            ..to
        }),
        (ModelConfig::Resnet(from), ModelConfig::Resnet(to)) => {
            ModelConfig::Resnet(pe_models::ResNetConfig { num_classes: from.num_classes, ..to })
        }
        (_, preset) => preset,
    })
}

/// `config`'s model holding `weights`, checked strictly (every tensor present with its shape,
/// nothing left over); `origin` names them in errors.
fn build(config: &ModelConfig, weights: Weights, origin: &Path) -> Result<(nn::VarStore, Model)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = config.init(vs.root())?;
    let selection = Selection { exclude: &[], head_init_scale: 1.0 };
    pretrained::load(config, &vs, origin, weights, &selection)?;
    Ok((vs, model))
}

/// Runs the baseline, the twin and (symmetric) the aligned baseline on up to `limit` validation
/// images of the run's recipe.
fn compare(
    trained: &Trained,
    recipe: &ExperimentConfig,
    target: &ModelConfig,
    twin_file: &Path,
    aligned: Option<Weights>,
    limit: usize,
) -> Result<LogitCheck> {
    let img_size = recipe.data.img_size as i64;
    let baseline = trained.load(img_size, Device::Cpu)?;
    let twin = Trained { weights: twin_file.to_owned(), model: target.clone(), recipe: None, classes: None }
        .load(img_size, Device::Cpu)?;
    let aligned = aligned
        .map(|weights| build(&at_img_size(&trained.model, img_size), weights, &trained.weights))
        .transpose()?;
    let loader = validation_loader(recipe, trained.classes.as_deref())?;
    let normalizer = Normalizer::new(recipe.data.mean, recipe.data.std, Device::Cpu);
    let precision = Precision { amp: recipe.train.amp, channels_last: false };
    let (mut outputs, mut labels): ([Vec<Tensor>; 3], Vec<i64>) = Default::default();
    let mut epoch = loader.epoch(0);
    tch::no_grad(|| -> Result<()> {
        for batch in epoch.by_ref() {
            let batch = batch?;
            let take = batch.n.min(limit - labels.len());
            if take == 0 {
                continue;
            }
            let (images, _) = to_device(&batch, Device::Cpu);
            let images = images.narrow(0, 0, take as i64);
            let forward = |model: &Model| eval_logits(model, &images, &normalizer, Device::Cpu, &precision);
            outputs[0].push(forward(&baseline.model)?);
            outputs[1].push(forward(&twin.model)?);
            if let Some((_, model)) = &aligned {
                outputs[2].push(forward(model)?);
            }
            labels.extend_from_slice(&batch.labels[..take]);
            loader.recycle(batch.images);
            if labels.len() >= limit {
                break;
            }
        }
        Ok(())
    })?;
    if labels.is_empty() {
        bail!("{}: no validation image to compare the logits on", loader.location().display());
    }
    let labels = Tensor::from_slice(&labels);
    let [baseline, twin, aligned] = outputs.map(|parts| (!parts.is_empty()).then(|| Tensor::cat(&parts, 0)));
    let (baseline, twin) = (baseline.expect("one batch at least"), twin.expect("one batch at least"));
    let top1 = |logits: &Tensor| {
        100.0
            * logits
                .argmax(1, false)
                .eq_tensor(&labels)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
    };
    let scale = baseline.norm().double_value(&[]);
    let change = |logits: &Tensor| (logits - &baseline).norm().double_value(&[]) / scale;
    let same = twin.argmax(1, false).eq_tensor(&baseline.argmax(1, false));
    Ok(LogitCheck {
        images: labels.size()[0] as usize,
        baseline_top1: top1(&baseline),
        converted_top1: top1(&twin),
        agreement: 100.0 * same.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]),
        relative_change: change(&twin),
        aligned_relative_change: aligned.as_ref().map(change),
    })
}

/// The kind of a tied matrix for the summary: the PE name without its block (`attn.wq`,
/// `layer2.shared_w`) and what it replaces without its layer (`qkv.weight[q]`, `conv3.weightᵀ`).
fn kind(tied: &TiedMatrix) -> String {
    let pe: Vec<&str> =
        tied.tied.split('.').filter(|p| *p != "blocks" && p.parse::<usize>().is_err()).collect();
    let replaced: Vec<&str> = tied.replaces.split('.').collect();
    format!("{} ← {}", pe.join("."), replaced[replaced.len().saturating_sub(2)..].join("."))
}

/// Per kind: matrices, mean naive error, mean error.
fn by_kind(tied: &[TiedMatrix]) -> Vec<(String, usize, f64, f64)> {
    let mut kinds: Vec<(String, usize, f64, f64)> = Vec::new();
    for t in tied {
        let k = kind(t);
        match kinds.iter_mut().find(|(name, ..)| *name == k) {
            Some(row) => {
                row.1 += 1;
                row.2 += t.naive_error;
                row.3 += t.error;
            }
            None => kinds.push((k, 1, t.naive_error, t.error)),
        }
    }
    kinds.into_iter().map(|(k, n, naive, error)| (k, n, naive / n as f64, error / n as f64)).collect()
}

fn logit_lines(check: &LogitCheck) -> String {
    let aligned = check
        .aligned_relative_change
        .map_or(String::new(), |c| format!("; the symmetry moves alone change them by {c:.2e}"));
    format!(
        "on {} validation images: baseline top-1 {:.2}%, twin {:.2}% before any training; the twin picks the \
         baseline's class on {:.2}% of them; logits change by {:.4} (relative){aligned}\n",
        check.images, check.baseline_top1, check.converted_top1, check.agreement, check.relative_change
    )
}

fn batch_norm_line(report: &Report) -> String {
    match report.batch_norm_batches {
        0 => String::new(),
        n => format!("BatchNorm statistics measured again on {n} training batches\n"),
    }
}

fn summary(report: &Report) -> String {
    let mut text = format!("{} → {} ({}): {}\n", report.source, report.to, report.method, report.weights);
    for (kind, n, naive, error) in by_kind(&report.tied) {
        text += &format!("  {kind:<32} ×{n:<3} relative error {error:.4} (naive {naive:.4})\n");
    }
    for note in &report.notes {
        text += &format!("note: {note}\n");
    }
    text += &batch_norm_line(report);
    if let Some(check) = &report.logits {
        text += &logit_lines(check);
    }
    text + &format!("fine-tune it with: [model] init = \"{}\"\n", report.weights)
}

fn markdown(report: &Report) -> String {
    let mut text = format!(
        "# {} → {} ({})\n\nWeights: `{}`\n\n| kind | matrices | relative error | naive |\n|---|---|---|---|\n",
        report.source, report.to, report.method, report.weights
    );
    for (kind, n, naive, error) in by_kind(&report.tied) {
        text += &format!("| {kind} | {n} | {error:.4} | {naive:.4} |\n");
    }
    let batch_norm = batch_norm_line(report);
    if !batch_norm.is_empty() {
        text += &format!("\n{batch_norm}");
    }
    if let Some(check) = &report.logits {
        text += &format!("\n{}", logit_lines(check));
    }
    for note in &report.notes {
        text += &format!("\n- {note}\n");
    }
    text += "\n| tied | replaces | relative error | naive |\n|---|---|---|---|\n";
    for t in &report.tied {
        text += &format!("| {} | {} | {:.4} | {:.4} |\n", t.tied, t.replaces, t.error, t.naive_error);
    }
    text
}
