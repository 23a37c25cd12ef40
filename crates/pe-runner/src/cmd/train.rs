//! `pe train`: the command line of a training run; the run itself is [`crate::train::epoch_loop`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::load_experiment;
use crate::train::epoch_loop::{self, Outcome};
use crate::train::run_folder::StartRequest;
use crate::train::run_identity;
use crate::train::stop::StopRequest;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment recipe (TOML).
    pub experiment: PathBuf,
    /// Override a key, e.g. `--set train.epochs=1 --set data.root=/data/imagenet`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Require a checkpoint to resume from (without it, a run resumes when its folder has one).
    #[arg(long, group = "resuming")]
    pub resume: bool,
    /// Resume from this checkpoint of the run instead of the newest (`step-N`, `best`, `last`), e.g.
    /// when the newest fails its content check; later checkpoints are dropped at the next save.
    #[arg(long, value_name = "CHECKPOINT", group = "resuming")]
    pub resume_from: Option<String>,
    /// The run's name, i.e. its folder under `logging.runs_dir` (default: the recipe's `name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Keys this resume may change from the stored run (e.g. `train.epochs`), with --resume.
    #[arg(long, num_args = 1.., value_name = "KEY", requires = "resuming")]
    pub allow_change: Vec<String>,
}

/// Trains the experiment of `args`. When `stop` is requested (a signal: see
/// [`crate::train::stop`]) the run saves after the current step and returns
/// [`Outcome::Interrupted`].
pub fn run(args: TrainArgs, stop: StopRequest) -> Result<Outcome> {
    let mut overrides = args.overrides.clone();
    if let Some(name) = &args.name {
        overrides.push(format!("name={name:?}"));
    }
    let experiment = load_experiment(&args.experiment, &overrides)?;
    run_identity::validate_allowed(&args.allow_change)?;
    let request = StartRequest {
        require: args.resume || args.resume_from.is_some(),
        from: args.resume_from.as_deref(),
        allowed: &args.allow_change,
    };
    epoch_loop::train(&experiment, &request, stop)
}
