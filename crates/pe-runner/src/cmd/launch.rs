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

/// Exits as the ranks did: 0, 2 when a rank refused its configuration, or 128 + the stop signal
/// that was forwarded to them (130 Ctrl-C).
pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.nproc >= 1, "--nproc must be at least 1");
    let pe = std::env::current_exe().context("locating the running `pe` binary")?;
    match pe_dist::launch(args.nproc, pe, &args.command) {
        Ok(pe_dist::Ended::Finished) => Ok(ExitCode::SUCCESS),
        Ok(pe_dist::Ended::Stopped { code }) => Ok(ExitCode::from(code)),
        // A rank refused its configuration (rank 0 printed why): exit as it did, 2.
        Err(pe_dist::Error::RankFailed { status, .. }) if status.code() == Some(2) => Ok(ExitCode::from(2)),
        Err(error) => Err(error.into()),
    }
}
