//! `pe analyze`: how trained weights use their space — spectra, ranks, power-law α, W/Wᵀ subspace
//! overlap and hidden energy outside col(W) (the `pe-analyze` crate) — for one run or several
//! side by side, as a table, Markdown, CSV, JSON, SVG figures and TensorBoard events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tch::{nn, Device};

use pe_analyze::{figures, headline_scalars, log_to_tensorboard, render, Analysis, Energy, Report, RunInfo};
use pe_data::{DataConfig, Loader, Split};
use pe_models::{weights, Model, ModelConfig};

use crate::config::{load_experiment, ExperimentConfig};
use crate::train::batch::{to_device, Normalizer};
use crate::train::checkpoint;
use crate::train::tensorboard::{EventWriter, HParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Run folders (`runs/NAME`), checkpoint folders or `.safetensors` weight files; two or more
    /// are compared side by side.
    #[arg(required = true, num_args = 1..=8, value_name = "RUN_DIR|CHECKPOINT")]
    pub sources: Vec<PathBuf>,
    /// Registry model for weights without a run (`resnet50` for torchvision's file, `deit_small`
    /// for timm's); give it once for all sources or once per source.
    #[arg(long, value_name = "NAME")]
    pub model: Vec<String>,
    /// Which checkpoint of a run folder: `best`, `last` or `step-N` (default: best, else last).
    #[arg(long, value_name = "best|last|step-N")]
    pub checkpoint: Option<String>,
    /// Also measure hidden activations on a validation split: the run's recipe data, or ROOT.
    #[arg(long, value_name = "ROOT", num_args = 0..=1)]
    pub data: Option<Option<PathBuf>>,
    /// Validation batches to measure with `--data`.
    #[arg(long, default_value_t = 4)]
    pub batches: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write SVG figures here: `spectra_<label>.svg` per source and `weight_space.svg`.
    #[arg(long, value_name = "DIR")]
    pub figures: Option<PathBuf>,
    /// Write TensorBoard events to DIR/<label>: spectra histograms, per-layer scalars, and for
    /// runs the resolved config as text and an HParams session.
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// libtorch intra-op threads (default: libtorch's). On a busy machine 1 is often fastest:
    /// LAPACK's threads wait on each other when the cores are shared.
    #[arg(long)]
    pub threads: Option<i32>,
}

/// One source resolved to a weights file, a model definition and what its run recorded.
struct Source {
    label: String,
    input: PathBuf,
    weights: PathBuf,
    model_name: String,
    model: ModelConfig,
    /// The run's resolved recipe, when the weights belong to a run.
    experiment: Option<ExperimentConfig>,
    run_dir: Option<PathBuf>,
    /// Optimizer steps of the checkpoint (its `state.json`), for TensorBoard.
    step: u64,
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    if args.model.len() > 1 && args.model.len() != args.sources.len() {
        bail!("give --model once for all sources or once per source ({} sources)", args.sources.len());
    }
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let mut reports = Vec::new();
    for (index, input) in args.sources.iter().enumerate() {
        let model_name = args.model.get(index).or(args.model.first().filter(|_| args.model.len() == 1));
        let mut source = resolve(input, model_name, args.checkpoint.as_deref())?;
        if reports.iter().any(|r: &Report| r.label == source.label) {
            source.label = format!("{}-{}", source.label, index + 1);
        }
        let (report, seconds) = analyze(&source, &args)?;
        eprintln!(
            "{}: {} matrices, {} tied pairs: SVDs and metrics in {seconds:.2} s",
            report.label,
            report.matrices.len(),
            report.pairs.len(),
        );
        if let Some(dir) = &args.tensorboard {
            write_events(&dir.join(&report.label), &report, &source)?;
        }
        reports.push(report);
    }
    match args.format {
        Format::Table => print!("{}", render::table(&reports)),
        Format::Markdown => print!("{}", render::markdown(&reports)),
        Format::Json => println!("{}", render::json(&reports)?),
        Format::Csv => print!("{}", render::csv(&reports)),
    }
    if let Some(dir) = &args.figures {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for report in &reports {
            eprintln!("wrote {}", figures::spectra(report, dir)?.display());
        }
        eprintln!("wrote {}", figures::weight_space(&reports, dir)?.display());
    }
    Ok(())
}

/// Finds the weights, the model and the run behind `input`.
fn resolve(input: &Path, model_name: Option<&String>, checkpoint_name: Option<&str>) -> Result<Source> {
    let (weights_file, run_dir) = if input.join("config.toml").is_file() {
        let dir = checkpoint_dir(input, checkpoint_name)?;
        (dir.join(checkpoint::MODEL), Some(input.to_owned()))
    } else if input.is_dir() {
        let file = input.join(checkpoint::MODEL);
        anyhow::ensure!(
            file.is_file(),
            "{} is neither a run folder nor a checkpoint folder",
            input.display()
        );
        let run_dir = run_of(&file);
        (file, run_dir)
    } else if input.is_file() {
        (input.to_owned(), run_of(input))
    } else {
        bail!("{} does not exist", input.display());
    };
    let experiment = match &run_dir {
        Some(dir) => Some(load_experiment(&dir.join("config.toml"), &[])?.config),
        None => None,
    };
    let (model_name, model) = match (model_name, &experiment) {
        (Some(name), _) => (name.clone(), pe_models::preset(name).map_err(anyhow::Error::msg)?),
        (None, Some(experiment)) => (describe(&experiment.model), experiment.model.clone()),
        (None, None) => bail!("{}: no run folder around these weights; pass --model NAME", input.display()),
    };
    let label = match &run_dir {
        Some(dir) => file_name(dir),
        None => file_name(&weights_file.with_extension("")),
    };
    let step = weights_file.parent().and_then(|dir| checkpoint::read_state(dir).ok()).map_or(0, |s| s.step);
    Ok(Source {
        label,
        input: input.to_owned(),
        weights: weights_file,
        model_name,
        model,
        experiment,
        run_dir,
        step,
    })
}

/// A run's model in a few words (its recipe holds the expanded config, not the preset name).
fn describe(model: &ModelConfig) -> String {
    match model {
        ModelConfig::Resnet(r) if r.pe_stages.is_empty() => format!("resnet {:?}", r.layers),
        ModelConfig::Resnet(r) => format!("resnet {:?}, PE stages {:?}", r.layers, r.pe_stages),
        ModelConfig::Vit(v) => {
            let tied = match (v.pe_attention, v.pe_mlp) {
                (true, true) => ", PE attn + mlp",
                (true, false) => ", PE attn",
                (false, true) => ", PE mlp",
                (false, false) => "",
            };
            format!("vit d{}×{}{tied}", v.embed_dim, v.depth)
        }
    }
}

/// `runs/NAME/checkpoints/<best|last|step-N>`; without a name, `best`, else `last`.
fn checkpoint_dir(run_dir: &Path, name: Option<&str>) -> Result<PathBuf> {
    let checkpoints = checkpoint::Checkpoints::new(run_dir);
    match name {
        Some(name) => checkpoints.named(name),
        None => checkpoints
            .best()
            .or_else(|| checkpoints.last())
            .with_context(|| format!("{} has no best or last checkpoint", run_dir.display())),
    }
}

/// The run folder of `runs/NAME/checkpoints/step-N/model.safetensors`, if that is where it is.
fn run_of(weights_file: &Path) -> Option<PathBuf> {
    let run = weights_file.parent()?.parent()?.parent()?;
    run.join("config.toml").is_file().then(|| run.to_owned())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The report of `source` and how long its SVDs and metrics took.
fn analyze(source: &Source, args: &AnalyzeArgs) -> Result<(Report, f64)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = source.model.init(vs.root())?;
    weights::load(&vs, &source.weights)?;
    let analysis = Analysis::new(&model)?;
    let energy = match &args.data {
        Some(root) => Some(measure(&analysis, &model, source, root.as_deref(), args.batches)?),
        None => None,
    };
    let run = RunInfo {
        source: source.input.display().to_string(),
        model: Some(source.model_name.clone()),
        checkpoint: Some(source.weights.display().to_string()),
        top1: source.run_dir.as_deref().and_then(final_top1),
        params: Some(vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()),
    };
    Ok((analysis.report(&source.label, run, energy.as_ref())?, analysis.seconds()))
}

/// Feeds `batches` validation batches through the model into the energy meters.
fn measure(
    analysis: &Analysis,
    model: &Model,
    source: &Source,
    root: Option<&Path>,
    batches: usize,
) -> Result<Energy> {
    let (mut data, batch_size) = match &source.experiment {
        Some(experiment) => (experiment.data.clone(), experiment.eval_batch_size()),
        None => {
            (DataConfig { img_size: source.model.default_img_size() as usize, ..DataConfig::default() }, 64)
        }
    };
    match root {
        Some(root) => data.root = root.to_owned(),
        None if source.experiment.is_none() => {
            bail!("{}: no recipe to take the data from; pass --data ROOT", source.input.display())
        }
        None => {}
    }
    let loader = Loader::open(&data, Split::Eval { batch_size, classes: None }, 0, 1)
        .with_context(|| format!("opening the validation split of {:?} (see data/README.md)", data.root))?;
    let normalizer = Normalizer::new(data.mean, data.std, Device::Cpu);
    let mut energy = analysis.energy();
    for batch in loader.epoch(0).take(batches) {
        let (images, _) = to_device(&batch?, Device::Cpu);
        energy.observe(model, &normalizer.apply(&images))?;
    }
    Ok(energy)
}

/// The last validation top-1 in the run's metrics.jsonl.
fn final_top1(run_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["type"] == "eval")
        .filter_map(|record| record["acc1"].as_f64())
        .next_back()
}

/// Config sections whose values become HParams (data paths and logging are not hyperparameters).
const HPARAM_SECTIONS: [&str; 4] = ["model", "optimizer", "schedule", "train"];

fn write_events(dir: &Path, report: &Report, source: &Source) -> Result<()> {
    let mut events =
        EventWriter::create(dir).with_context(|| format!("creating events in {}", dir.display()))?;
    log_to_tensorboard(report, &mut events, source.step)?;
    if let (Some(run_dir), Some(experiment)) = (&source.run_dir, &source.experiment) {
        let text = std::fs::read_to_string(run_dir.join("config.toml"))?;
        events.text("config", &format!("```toml\n{text}\n```"), source.step)?;
        let config = serde_json::to_value(experiment)?;
        let hparams: BTreeMap<String, HParam> = HParam::flatten(&config)
            .into_iter()
            .filter(|(key, _)| HPARAM_SECTIONS.iter().any(|s| key.starts_with(&format!("{s}."))))
            .collect();
        let mut metrics: Vec<String> = headline_scalars(report).into_iter().map(|(tag, _)| tag).collect();
        if let Some(top1) = report.run.top1 {
            events.scalar("run/top1", top1, source.step)?;
            metrics.insert(0, "run/top1".into());
        }
        events.hparams(&hparams, &metrics.iter().map(String::as_str).collect::<Vec<_>>())?;
        events.hparams_end(true)?;
    }
    events.flush()?;
    Ok(())
}
