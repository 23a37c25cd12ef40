//! `pe eval`: evaluates a checkpoint (or a weights file) on an experiment's validation split.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tch::nn::{self, ModuleT};
use tch::Device;

use pe_data::{Loader, Split};
use pe_models::weights;

use crate::config::{load_experiment, ExperimentConfig};
use crate::train::amp::Precision;
use crate::train::batch::Normalizer;
use crate::train::checkpoint;
use crate::train::evaluate::{evaluate, EvalResult};
use crate::train::run_identity::Identity;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The experiment recipe (TOML) whose model and data to use.
    pub experiment: PathBuf,
    /// A checkpoint folder (`runs/NAME/checkpoints/best`) or a `.safetensors` weights file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Evaluate the checkpoint's EMA weights instead of the trained ones.
    #[arg(long)]
    pub ema: bool,
    /// Override a recipe key, e.g. `--set data.root=/data/imagenet-v2` to evaluate on other data.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// The validation split of `config`, labels numbered by `classes` (a run's list) or by the
/// split's own folders; says which classes it has no image of.
pub fn validation_loader(config: &ExperimentConfig, classes: Option<&[String]>) -> Result<Loader> {
    let split = Split::Eval { batch_size: config.eval_batch_size(), classes };
    let loader = Loader::open(&config.data, split, 0, 1).with_context(|| {
        format!("opening the validation split of {:?} (see data/README.md)", config.data.root)
    })?;
    if !loader.missing_classes().is_empty() {
        println!(
            "warning: the validation split has no images of {} class(es): {}",
            loader.missing_classes().len(),
            loader.missing_classes().join(", ")
        );
    }
    Ok(loader)
}

/// `model` on `loader` with the recipe's normalisation and precision; unreadable files are
/// reported on stderr and left out.
pub fn evaluate_with_recipe(
    model: &impl ModuleT,
    loader: &Loader,
    config: &ExperimentConfig,
    device: Device,
) -> Result<EvalResult> {
    let normalizer = Normalizer::new(config.data.mean, config.data.std, device);
    let precision = Precision { amp: config.train.amp, channels_last: false };
    let (sums, bad) = evaluate(model, loader, &normalizer, device, &precision)?;
    if bad.count > 0 {
        eprintln!("warning: {}: left out {bad}", loader.location().display());
    }
    sums.result()
}

pub fn run(args: EvalArgs) -> Result<()> {
    let config = load_experiment(&args.experiment, &args.overrides)?.config;
    let device = config.train.device.resolve()?;
    let weights_file = if args.checkpoint.is_dir() {
        let name = if args.ema { checkpoint::EMA } else { checkpoint::MODEL };
        let file = args.checkpoint.join(name);
        if args.ema && !file.exists() {
            bail!(
                "--ema: {} holds no EMA weights: the run trained without an EMA (train.ema_decay = 0)",
                args.checkpoint.display()
            );
        }
        checkpoint::verify(&args.checkpoint, Some(&[name]))?;
        file
    } else {
        args.checkpoint.clone()
    };
    let vs = nn::VarStore::new(device);
    let model = config.model.init(vs.root())?;
    weights::load(&vs, &weights_file)?;
    // A checkpoint knows the class list it was trained with; a bare weights file falls back to
    // the validation split's own folders.
    let identity = if args.checkpoint.is_dir() { Identity::read(&args.checkpoint)? } else { None };
    if identity.is_none() {
        println!("note: no run identity beside the weights: classes are the validation split's folders");
    }
    let loader = validation_loader(&config, identity.as_ref().map(|i| i.dataset.classes.as_slice()))?;
    let result = evaluate_with_recipe(&model, &loader, &config, device)?;
    println!(
        "{}: top-1 {:.2}% top-5 {:.2}% loss {:.4} on {}",
        weights_file.display(),
        result.acc1,
        result.acc5,
        result.loss,
        result.counted()
    );
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
