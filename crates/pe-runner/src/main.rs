//! `pe`: the command-line entry point of the workspace.

mod forward;
mod info;
mod summary;

use clap::{Parser, Subcommand};

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
    /// Show the libtorch in use, where it was loaded from, and the devices it sees.
    Info,
    /// Parameters (with/without head) and MACs of registry models, beside the paper's numbers.
    Summary(summary::SummaryArgs),
    /// Run a model on tensors from a safetensors file (interop and parity checks with PyTorch).
    Forward(forward::ForwardArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => info::run(),
        Command::Summary(args) => summary::run(args),
        Command::Forward(args) => forward::run(args),
    }
}
