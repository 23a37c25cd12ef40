//! `pe prepare`: builds the datasets the recipes read — Fashion-MNIST for the CPU recipes and tests,
//! ImageNet from its official archives (or Kaggle's copy), and tar shards of any ImageFolder.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pe_data::imagenet;
use pe_data::shards::{write_shards, ShardWriteOptions};

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
    /// ImageNet-1k archives (or Kaggle's folder) -> train/<wnid>/*.JPEG and val/<wnid>/*.JPEG.
    /// Streams the tars; an interrupted run continues when rerun. With the 1,000-class devkit the
    /// counts 1,281,167 / 50,000 are checked; a smaller devkit (test archives) checks its own lists.
    Imagenet {
        /// ILSVRC2012_img_train.tar (a tar of per-class tars).
        #[arg(long, requires_all = ["val_tar", "devkit"], conflicts_with = "kaggle")]
        train_tar: Option<PathBuf>,
        /// ILSVRC2012_img_val.tar (flat).
        #[arg(long)]
        val_tar: Option<PathBuf>,
        /// ILSVRC2012_devkit_t12.tar.gz (meta.mat and the validation ground truth).
        #[arg(long)]
        devkit: Option<PathBuf>,
        /// Kaggle's imagenet-object-localization-challenge folder instead of the archives.
        #[arg(long)]
        kaggle: Option<PathBuf>,
        #[arg(long, default_value = "data/imagenet")]
        to: PathBuf,
    },
    /// An ImageFolder (train/ defines the classes, val/ is mapped through them) -> WebDataset-style
    /// tar shards plus index.json, for `data.format = "shards"`.
    Shards {
        #[arg(long, default_value = "data/imagenet")]
        from: PathBuf,
        #[arg(long, default_value = "data/imagenet-shards")]
        to: PathBuf,
        /// Target shard size in MB.
        #[arg(long, default_value_t = 1024)]
        shard_mb: u64,
        /// Rebuild a complete shard set at --to that was written with other settings.
        #[arg(long)]
        force: bool,
    },
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg:>6} [{bar:40}] {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A progress callback drawing one bar per phase.
fn on_progress(bar: &ProgressBar) -> impl FnMut(&str, u64, u64) + '_ {
    move |phase, done, total| {
        if bar.message() != phase {
            bar.set_message(phase.to_owned());
            bar.set_length(total);
        }
        bar.set_position(done);
    }
}

pub fn run(args: PrepareArgs) -> Result<()> {
    match args.dataset {
        Dataset::FashionMnist { from, to } => {
            let summary = pe_data::fashion_mnist::prepare(&from, &to)?;
            println!("{summary}");
        }
        Dataset::Imagenet { train_tar, val_tar, devkit, kaggle, to } => {
            let source = match (train_tar, val_tar, devkit, kaggle) {
                (Some(train_tar), Some(val_tar), Some(devkit), None) => {
                    imagenet::Source::Archives { train_tar, val_tar, devkit }
                }
                (None, None, None, Some(dir)) => imagenet::Source::Kaggle(dir),
                _ => bail!("give --train-tar, --val-tar and --devkit, or --kaggle DIR"),
            };
            let bar = bar();
            let summary = imagenet::prepare(&source, &to, &mut on_progress(&bar))
                .with_context(|| format!("preparing ImageNet into {}", to.display()))?;
            bar.finish_and_clear();
            println!("{}: {summary}", to.display());
        }
        Dataset::Shards { from, to, shard_mb, force } => {
            let shard_bytes = shard_mb.saturating_mul(1 << 20);
            let opts = ShardWriteOptions { shard_bytes, force, ..Default::default() };
            let bar = bar();
            let mut progress = on_progress(&bar);
            let summary = write_shards(&from, &to, &opts, &mut |split, done, total| {
                progress(split, done as u64, total as u64)
            })
            .with_context(|| format!("writing shards of {} into {}", from.display(), to.display()))?;
            bar.finish_and_clear();
            println!("{}: {summary}", to.display());
        }
    }
    Ok(())
}
