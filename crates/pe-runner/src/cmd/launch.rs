//! `pe launch --nproc N -- train X.toml`: runs N ranks of a `pe` command on this machine with
//! torchrun's environment, without Python (one machine; use torchrun or srun across machines).

use std::process::ExitCode;

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

/// Exits as the ranks did: 0, or 128 + the stop signal that was forwarded to them (130 Ctrl-C).
pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.nproc >= 1, "--nproc must be at least 1");
    let pe = std::env::current_exe().context("locating the running `pe` binary")?;
    Ok(match pe_dist::launch(args.nproc, pe, &args.command)? {
        pe_dist::Ended::Finished => ExitCode::SUCCESS,
        pe_dist::Ended::Stopped { code } => ExitCode::from(code),
    })
}
