//! `pe prepare`: builds the small real datasets the CPU recipes and tests use.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(subcommand)]
    dataset: Dataset,
}

#[derive(Debug, Subcommand)]
enum Dataset {
    /// Debian's dataset-fashion-mnist IDX files -> an ImageFolder of JPEGs (60,000 train / 10,000 val).
    FashionMnist {
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        from: PathBuf,
        #[arg(long, default_value = "data/fashion-mnist")]
        to: PathBuf,
    },
}

pub fn run(args: PrepareArgs) -> Result<()> {
    match args.dataset {
        Dataset::FashionMnist { from, to } => {
            let summary = pe_data::fashion_mnist::prepare(&from, &to)?;
            println!("{summary}");
        }
    }
    Ok(())
}
