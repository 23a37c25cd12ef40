//! `pe launch --nproc N -- train X.toml`: runs N ranks of a `pe` command on this machine with
//! torchrun's environment, without Python (one machine; use torchrun or srun across machines).

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Processes to start (one per GPU on CUDA).
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// The `pe` command every rank runs, e.g. `train experiments/resnet50.toml`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: LaunchArgs) -> Result<()> {
    anyhow::ensure!(args.nproc >= 1, "--nproc must be at least 1");
    let pe = std::env::current_exe().context("locating the running `pe` binary")?;
    Ok(pe_dist::launch(args.nproc, pe, &args.command)?)
}
