//! `pe`: the command-line entry point of the workspace.

mod info;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => info::run(),
    }
}
