//! `pe average`: one checkpoint from several of a model: the uniform average of their weights
//! (timm's `avg_checkpoints.py`; `--ema` averages their EMA weights), or a greedy soup (Wortsman
//! et al., 2022: the checkpoints in order of validation top-1, each added only if the soup's
//! top-1 does not drop). BatchNorm statistics are averaged with the rest, or measured again on
//! training batches (`--recompute-bn`). The result is a checkpoint folder, which `pe eval`,
//! `pe analyze` and `model.init` take like any other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tch::nn;

use pe_models::weights;

use crate::cmd::eval::{evaluate_with_recipe, validation_loader};
use crate::config::{resolved_with_overrides, ExperimentConfig};
use crate::eval::labels::Targets;
use crate::train::checkpoint::{self, Checkpoints, TrainState};
use crate::train::evaluate::Keep;
use crate::train::run_identity::Identity;
use crate::train::weight_average::{set_mean, Ingredient, TrainingBatches};

#[derive(Debug, Args)]
pub struct AverageArgs {
    /// A run folder (its newest step folders, see --last), or two or more checkpoint folders of
    /// one model and class list.
    #[arg(required = true, value_name = "RUN_DIR|CHECKPOINT")]
    pub sources: Vec<PathBuf>,
    /// Of a run folder: its newest N step folders up to `last` (default: every one it kept;
    /// `train.keep_checkpoints` says how many it keeps).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Average the checkpoints' EMA weights (`ema.safetensors`) instead of the trained ones.
    #[arg(long)]
    pub ema: bool,
    /// A greedy soup instead of the uniform average (evaluates on the recipe's validation split).
    #[arg(long)]
    pub greedy: bool,
    /// Measure BatchNorm statistics again over this many training batches (the recipe's
    /// training transform, in train mode) instead of averaging them.
    #[arg(long, value_name = "BATCHES")]
    pub recompute_bn: Option<usize>,
    /// The checkpoint folder to write (default: `checkpoints/average-N` or `soup-N` of the run;
    /// required when the checkpoints come from several runs).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Override a key of the run's recipe, e.g. `--set data.root=PATH` when the data has moved.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Why `pe average` refuses its sources (exit code 2: nothing was written).
#[derive(Debug, thiserror::Error)]
#[error("pe average: {0}")]
pub struct AverageError(String);

fn refuse<T>(message: String) -> Result<T> {
    Err(AverageError(message).into())
}

/// One checkpoint to average, with what its run recorded.
struct Source {
    dir: PathBuf,
    identity: Identity,
    state: TrainState,
}

/// What `average.json` beside the averaged weights records.
#[derive(Serialize)]
struct Record {
    method: &'static str,
    ema: bool,
    /// `averaged`, or `recomputed on N training batches`.
    batch_norm: String,
    /// Every checkpoint considered, with its own validation top-1 under `--greedy`.
    checkpoints: Vec<Considered>,
    /// The validation top-1 of the result (greedy soups only).
    top1: Option<f64>,
}

#[derive(Serialize)]
struct Considered {
    dir: String,
    step: u64,
    top1: Option<f64>,
    /// Whether it is in the result.
    used: bool,
}

pub fn run(args: AverageArgs) -> Result<()> {
    let (dirs, run_dir) = checkpoint_dirs(&args)?;
    let weights_name = if args.ema { checkpoint::EMA } else { checkpoint::MODEL };
    let sources = dirs.iter().map(|dir| open_source(dir, weights_name)).collect::<Result<Vec<_>>>()?;
    let newest = sources.iter().max_by_key(|s| s.state.step).expect("at least two checkpoints");
    let config = resolved_with_overrides(&newest.identity.config, &args.overrides)?;
    check_compatible(&sources, &config)?;
    let out = match (&args.out, &run_dir) {
        (Some(out), _) => out.clone(),
        (None, Some(run)) => {
            let kind = if args.greedy { "soup" } else { "average" };
            let ema = if args.ema { "-ema" } else { "" };
            run.join("checkpoints").join(format!("{kind}{ema}-{}", sources.len()))
        }
        (None, None) => {
            return refuse("the checkpoints come from several runs: say where to write with --out".into())
        }
    };

    let device = config.train.device.resolve()?;
    let vs = nn::VarStore::new(device);
    let model = config.model.init(vs.root())?;
    let ingredients = sources
        .iter()
        .map(|s| Ingredient::load(&vs, &s.dir.join(weights_name)))
        .collect::<Result<Vec<_>>>()?;
    let classes = &newest.identity.dataset.classes;
    let batch_norm = BatchNormPolicy::new(&config, args.recompute_bn, device)?;
    let mix = |chosen: &[usize]| -> Result<()> {
        set_mean(&vs, &chosen.iter().map(|&i| &ingredients[i]).collect::<Vec<_>>());
        batch_norm.apply(&model, &vs)
    };

    let (chosen, scores, top1) = if args.greedy {
        let loader = validation_loader(&config, Some(classes))?;
        let targets = Targets::identity(classes.clone());
        let score = |chosen: &[usize]| -> Result<f64> {
            mix(chosen)?;
            let evaluation =
                evaluate_with_recipe(&model, &loader, &config, device, &targets, Keep::default())?;
            Ok(evaluation.tally.result(false)?.acc1)
        };
        let (chosen, scores, top1) = greedy_soup(&sources, score)?;
        (chosen, Some(scores), Some(top1))
    } else {
        ((0..sources.len()).collect(), None, None)
    };
    mix(&chosen)?;

    let record = Record {
        method: if args.greedy { "greedy soup" } else { "uniform" },
        ema: args.ema,
        batch_norm: batch_norm.describe(),
        checkpoints: sources
            .iter()
            .enumerate()
            .map(|(i, s)| Considered {
                dir: s.dir.display().to_string(),
                step: s.state.step,
                top1: scores.as_ref().map(|scores: &Vec<f64>| scores[i]),
                used: chosen.contains(&i),
            })
            .collect(),
        top1,
    };
    let state = TrainState { logs: None, ..newest.state.clone() };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    checkpoint::publish(&out, &state, |dir| {
        weights::save(&vs, &dir.join(checkpoint::MODEL))?;
        newest.identity.write(dir)?;
        let file = dir.join("average.json");
        std::fs::write(&file, serde_json::to_string_pretty(&record)? + "\n")
            .with_context(|| format!("writing {}", file.display()))
    })?;
    let used: Vec<String> = chosen.iter().map(|&i| format!("step {}", sources[i].state.step)).collect();
    println!(
        "wrote {} ({} of {} checkpoints: {}; BatchNorm {})",
        out.display(),
        record.method,
        chosen.len(),
        used.join(", "),
        record.batch_norm
    );
    Ok(())
}

/// The checkpoint folders the sources name, and the run they all belong to, if one.
fn checkpoint_dirs(args: &AverageArgs) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let dirs = match &args.sources[..] {
        [run] if run.join("checkpoints").is_dir() => newest_steps(run, args.last)?,
        sources => {
            if args.last.is_some() {
                return refuse("--last picks the newest checkpoints of one run folder; here checkpoint folders are named".into());
            }
            sources.to_vec()
        }
    };
    if dirs.len() < 2 {
        return refuse(format!(
            "{} checkpoint(s) to average: name a run folder that kept several (train.keep_checkpoints) \
             or two or more checkpoint folders",
            dirs.len()
        ));
    }
    let run_of = |dir: &PathBuf| fs_canonical(dir).and_then(|d| Some(d.parent()?.parent()?.to_owned()));
    let runs: Vec<Option<PathBuf>> = dirs.iter().map(run_of).collect();
    let one_run = runs.windows(2).all(|w| w[0] == w[1]).then(|| runs[0].clone()).flatten();
    Ok((dirs, one_run.filter(|run| run.join("checkpoints").is_dir())))
}

fn fs_canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// The newest `last` step folders of `run` up to the one `last` names (all of them without a number).
fn newest_steps(run: &Path, last: Option<usize>) -> Result<Vec<PathBuf>> {
    let checkpoints = Checkpoints::new(run);
    let last_step = checkpoints.last().and_then(|dir| checkpoint::read_state(&dir).ok()).map(|s| s.step);
    let steps: Vec<PathBuf> = checkpoints
        .steps()
        .into_iter()
        .filter(|(step, _)| last_step.is_none_or(|l| *step <= l))
        .map(|(_, dir)| dir)
        .collect();
    let wanted = last.unwrap_or(steps.len());
    if wanted > steps.len() {
        return refuse(format!(
            "{} kept {} step folder(s), fewer than --last {wanted} (train.keep_checkpoints sets how many a run keeps)",
            run.display(),
            steps.len()
        ));
    }
    Ok(steps[steps.len() - wanted..].to_vec())
}

fn open_source(dir: &Path, weights_name: &str) -> Result<Source> {
    if !dir.join(checkpoint::STATE).is_file() {
        return refuse(format!("{} is not a checkpoint folder (no {})", dir.display(), checkpoint::STATE));
    }
    if !dir.join(weights_name).is_file() {
        let why =
            if weights_name == checkpoint::EMA { " (its run trained with train.ema_decay = 0)" } else { "" };
        return refuse(format!("{} has no {weights_name}{why}", dir.display()));
    }
    checkpoint::verify(dir, Some(&[weights_name]))?;
    let Some(identity) = Identity::read(dir)? else {
        return refuse(format!(
            "{} has no run identity (identity.json): its model and classes are unknown",
            dir.display()
        ));
    };
    Ok(Source { dir: dir.to_owned(), identity, state: checkpoint::read_state(dir)? })
}

/// Refuses checkpoints of another architecture or class list than `config`'s (the newest one's).
fn check_compatible(sources: &[Source], config: &ExperimentConfig) -> Result<()> {
    let reference = sources.iter().max_by_key(|s| s.state.step).expect("checked: two or more");
    for source in sources {
        let theirs = resolved_with_overrides(&source.identity.config, &[])?;
        let (theirs_classes, ours) = (&source.identity.dataset.classes, &reference.identity.dataset.classes);
        if theirs_classes != ours {
            let at = theirs_classes
                .iter()
                .zip(ours)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs_classes.len()));
            let name = |list: &[String]| list.get(at).map_or("nothing".into(), |c| format!("{c:?}"));
            return refuse(format!(
                "{} was trained on another class list than {}: {} classes vs {}, class {at} is {} vs {}",
                source.dir.display(),
                reference.dir.display(),
                theirs_classes.len(),
                ours.len(),
                name(theirs_classes),
                name(ours)
            ));
        }
        if theirs.model != config.model {
            return refuse(format!(
                "{} is another architecture than {}: their [model] sections differ",
                source.dir.display(),
                reference.dir.display()
            ));
        }
    }
    Ok(())
}

/// Wortsman et al.'s greedy soup over `sources`: each scored alone, then added best first while
/// the soup's score does not drop. Returns the chosen indices, each one's own score, and the soup's.
fn greedy_soup(
    sources: &[Source],
    mut score: impl FnMut(&[usize]) -> Result<f64>,
) -> Result<(Vec<usize>, Vec<f64>, f64)> {
    let mut alone = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let top1 = score(&[i])?;
        println!("{}: top-1 {top1:.2}%", source.dir.display());
        alone.push(top1);
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by(|&a, &b| alone[b].total_cmp(&alone[a]));
    let mut chosen = vec![order[0]];
    let mut best = alone[order[0]];
    for &candidate in &order[1..] {
        let trial: Vec<usize> = chosen.iter().copied().chain([candidate]).collect();
        let top1 = score(&trial)?;
        let kept = top1 >= best;
        println!(
            "soup of {} + step {}: top-1 {top1:.2}% ({})",
            chosen.len(),
            sources[candidate].state.step,
            if kept { "added" } else { "left out" }
        );
        if kept {
            chosen = trial;
            best = top1;
        }
    }
    Ok((chosen, alone, best))
}

/// What happens to the BatchNorm statistics of an average.
enum BatchNormPolicy {
    Averaged,
    Recomputed(TrainingBatches),
}

impl BatchNormPolicy {
    fn new(config: &ExperimentConfig, batches: Option<usize>, device: tch::Device) -> Result<Self> {
        let Some(batches) = batches else { return Ok(Self::Averaged) };
        if batches == 0 {
            return refuse("--recompute-bn needs at least 1 batch".into());
        }
        Ok(Self::Recomputed(TrainingBatches::open(config, batches, device)?))
    }

    fn apply(&self, model: &impl tch::nn::ModuleT, vs: &nn::VarStore) -> Result<()> {
        if let Self::Recomputed(batches) = self {
            batches.recompute_bn(model, vs)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self {
            Self::Averaged => "averaged".into(),
            Self::Recomputed(batches) => format!("recomputed on {} training batches", batches.batches()),
        }
    }
}
