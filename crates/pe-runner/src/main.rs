//! `pe`: the command-line entry point of the workspace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use pe_runner::{bench, config, eval_cmd, forward, info, launch_cmd, prepare, run_identity, summary, train};

/// Library messages (`tracing`) go to stderr as `LEVEL target: message`; `RUST_LOG` overrides the
/// default, which shows our crates' info and above and everyone else's warnings.
fn log_to_stderr() {
    let default = "warn,pe_data=info,pe_models=info,pe_layers=info,pe_torch=info,pe_dist=info,pe_runner=info";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .without_time()
        .init();
}

#[derive(Parser)]
#[command(
    name = "pe",
    version,
    about = "Parameter-efficient (W/Wᵀ) models on libtorch: train, evaluate, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an experiment (resumes automatically when its run folder has a checkpoint).
    Train(train::TrainArgs),
    /// Evaluate a checkpoint on an experiment's validation split.
    Eval(eval_cmd::EvalArgs),
    /// Parameters (with/without head) and MACs of registry models, beside the paper's numbers.
    Summary(summary::SummaryArgs),
    /// Prepare a dataset: Fashion-MNIST from Debian's package, ImageNet from its archives, or tar shards of an ImageFolder.
    Prepare(prepare::PrepareArgs),
    /// Run a model on tensors from a safetensors file (interop and parity checks with PyTorch).
    Forward(forward::ForwardArgs),
    /// Time one training step (forward, backward, AdamW) of a registry model on random data.
    Bench(bench::BenchArgs),
    /// How trained weights use their space: spectra, ranks, W/Wᵀ overlap, energy outside col(W).
    Analyze(pe_runner::analyze_cmd::AnalyzeArgs),
    /// Run a `pe` command as N ranks on this machine with torchrun's environment
    /// (`pe launch --nproc 2 -- train X.toml`).
    Launch(launch_cmd::LaunchArgs),
    /// Show the libtorch in use, where it was loaded from, and the devices it sees.
    Info,
}

/// Installs the Ctrl-C handler once per process. First Ctrl-C: the run finishes its step, saves and
/// exits 130. Second: exit at once.
fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)");
    })
    .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))?;
    Ok(flag)
}

/// Exit codes: 0 success, 1 failure, 2 invalid configuration (nothing started), 130 interrupted.
fn main() -> ExitCode {
    pe_torch::allocator::keep_freed_memory();
    log_to_stderr();
    let result = match Cli::parse().command {
        Command::Train(args) => {
            interrupt_flag().and_then(|flag| train::run(args, flag)).map(|outcome| match outcome {
                train::Outcome::Finished => ExitCode::SUCCESS,
                train::Outcome::Interrupted => ExitCode::from(130),
            })
        }
        Command::Eval(args) => eval_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Summary(args) => summary::run(args).map(|()| ExitCode::SUCCESS),
        Command::Prepare(args) => prepare::run(args).map(|()| ExitCode::SUCCESS),
        Command::Forward(args) => forward::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => pe_runner::analyze_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Launch(args) => launch_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Info => info::run().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) if error.is::<config::ConfigError>() || error.is::<run_identity::RunConflict>() => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
