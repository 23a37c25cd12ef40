//! `pe`: the command-line entry point of the workspace.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use pe_runner::cmd::{
    analyze, average, bench, convert, eval, export, forward, info, launch, predict, prepare, summary, train,
};
use pe_runner::config;
use pe_runner::eval::labels::EvalSetError;
use pe_runner::train::epoch_loop::Outcome;
use pe_runner::train::stop::StopRequest;
use pe_runner::train::{init_weights, param_groups, run_identity, teacher};

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
    /// Evaluate checkpoints: top-1/top-5, per class, robustness sets (ImageNet-V2/A/R/ReaL), sizes and crops.
    Eval(eval::EvalArgs),
    /// Classify your own images with a trained model (the recipe's eval preprocessing).
    Predict(predict::PredictArgs),
    /// Parameters (with/without head) and MACs of registry models, beside the paper's numbers.
    Summary(summary::SummaryArgs),
    /// Prepare a dataset: Fashion-MNIST from Debian's package, ImageNet from its archives, or tar shards of an ImageFolder.
    Prepare(prepare::PrepareArgs),
    /// Run a model on tensors from a safetensors file (interop and parity checks with PyTorch).
    Forward(forward::ForwardArgs),
    /// Time one training step (forward, backward, AdamW) of a registry model on random data.
    Bench(bench::BenchArgs),
    /// How trained weights use their space: spectra, ranks, W/Wᵀ overlap, energy outside col(W).
    Analyze(analyze::AnalyzeArgs),
    /// Average checkpoints (uniformly, or as a greedy soup) into a new checkpoint.
    Average(average::AverageArgs),
    /// Turn a trained baseline into its PE twin (tied W/Wᵀ) for fine-tuning, with the error of each tie.
    Convert(convert::ConvertArgs),
    /// Export a trained model: TorchScript, ONNX or safetensors, with its preprocessing as JSON.
    Export(export::ExportArgs),
    /// Run a `pe` command as N ranks on this machine with torchrun's environment
    /// (`pe launch --nproc 2 -- train X.toml`).
    Launch(launch::LaunchArgs),
    /// Show the libtorch in use, where it was loaded from, and the devices it sees.
    Info,
}

/// `pe summary | head`: once `head` has read enough, the next write raises SIGPIPE, and the
/// process ends as Unix tools do (killed by SIGPIPE, the shell's 141) instead of Rust's default,
/// a panic on the failed write.
fn end_quietly_when_the_output_closes() {
    let always = Arc::new(AtomicBool::new(true));
    // Failing to register only keeps Rust's default (an error instead of a quiet end).
    let _ = signal_hook::flag::register_conditional_default(signal_hook::consts::SIGPIPE, always);
}

/// Exit codes: 0 success, 1 failure, 2 invalid configuration (nothing started), 128 + the signal
/// when a run was stopped by one and saved (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1).
fn main() -> ExitCode {
    pe_torch::allocator::keep_freed_memory();
    log_to_stderr();
    let command = Cli::parse().command;
    // A run must not die because its output pipe closed (it would lose its steps since the last
    // checkpoint); it writes through a sink that ignores that (see observers.rs).
    if !matches!(command, Command::Train(_) | Command::Launch(_)) {
        end_quietly_when_the_output_closes();
    }
    let result = match command {
        Command::Train(args) => StopRequest::install().and_then(|stop| {
            Ok(match train::run(args, stop.clone())? {
                Outcome::Finished => ExitCode::SUCCESS,
                Outcome::Interrupted => ExitCode::from(stop.exit_code()),
            })
        }),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Predict(args) => predict::run(args),
        Command::Summary(args) => summary::run(args).map(|()| ExitCode::SUCCESS),
        Command::Prepare(args) => prepare::run(args).map(|()| ExitCode::SUCCESS),
        Command::Forward(args) => forward::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => analyze::run(args).map(|()| ExitCode::SUCCESS),
        Command::Average(args) => average::run(args).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => convert::run(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => export::run(args).map(|()| ExitCode::SUCCESS),
        Command::Launch(args) => launch::run(args),
        Command::Info => info::run().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error)
            if error.is::<config::ConfigError>()
                || error.is::<run_identity::RunConflict>()
                || error.is::<init_weights::InitError>()
                || error.is::<teacher::TeacherError>()
                || error.is::<param_groups::UnmatchedPattern>()
                || error.is::<average::AverageError>()
                || error.is::<convert::ConvertRefusal>()
                || error.is::<EvalSetError>() =>
        {
            // Every rank of a launch reads the same recipe: one of them says what is wrong.
            if std::env::var("RANK").map_or(true, |rank| rank == "0") {
                eprintln!("error: {error}");
            }
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
