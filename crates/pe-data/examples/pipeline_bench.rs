//! Loader throughput on an ImageFolder: one warm-up epoch, then timed epochs; prints one JSON line.
//!
//! Usage: `pipeline_bench <root> <train-basic|train-deit|eval> <workers> [batch=64] [timed epochs=1]`.
//! `train-basic` = RandomResizedCrop(224) + flip (torchvision's ResNet recipe); `train-deit` adds bicubic,
//! RandAugment `rand-m9-mstd0.5-inc1` and random erasing 0.25; `eval` = Resize(256) + CenterCrop(224).

use pe_data::config::DataConfig;
use pe_data::index::{ImageFolder, IndexCache};
use pe_data::loader::{Loader, LoaderOptions};
use pe_data::transforms::rand_augment::RandAugmentSpec;
use pe_data::transforms::resize::Interpolation;
use pe_data::Transform;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        return Err(
            "usage: pipeline_bench <root> <train-basic|train-deit|eval> <workers> [batch] [epochs]".into()
        );
    }
    let root = std::path::PathBuf::from(&a[1]);
    let pipeline = a[2].as_str();
    let workers: usize = a[3].parse()?;
    let batch: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let epochs: u64 = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let mut cfg = DataConfig { root: root.clone(), workers, color_jitter: 0.0, ..Default::default() };
    if pipeline == "train-deit" {
        cfg.interpolation = Interpolation::Bicubic;
        cfg.auto_augment = Some(RandAugmentSpec::deit());
        cfg.reprob = 0.25;
    }
    // Ablations without recompiling: PE_BENCH_AA=none|<string>, PE_BENCH_REPROB=<p>.
    if let Ok(aa) = std::env::var("PE_BENCH_AA") {
        cfg.auto_augment = (aa != "none").then(|| aa.parse()).transpose()?;
    }
    if let Ok(p) = std::env::var("PE_BENCH_REPROB") {
        cfg.reprob = p.parse()?;
    }
    let ds = ImageFolder::open(&root, "train", IndexCache::Off)?;
    let (transform, opts) = match pipeline {
        "train-basic" | "train-deit" => (Transform::train(&cfg)?, LoaderOptions::train(&cfg, batch, 0, 0, 1)),
        "eval" => (Transform::eval(&cfg)?, LoaderOptions::eval(&cfg, batch, 0, 1)),
        other => return Err(format!("unknown pipeline {other}").into()),
    };
    let loader = Loader::new(ds, transform, LoaderOptions { drop_last: false, ..opts })?;
    let run = |epoch: u64| -> Result<usize, pe_data::Error> {
        let mut n = 0;
        for b in loader.epoch(epoch) {
            let b = b?;
            n += b.n;
            loader.recycle(b.images);
        }
        Ok(n)
    };
    run(0)?;
    let start = Instant::now();
    let mut n = 0;
    for e in 1..=epochs {
        n += run(e)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!(
        "{{\"impl\": \"pe-data\", \"pipeline\": \"{pipeline}\", \"workers\": {workers}, \"batch\": {batch}, \
         \"images\": {n}, \"seconds\": {secs:.3}, \"img_per_s\": {rate:.1}, \"img_per_s_per_worker\": {:.1}}}",
        rate / workers as f64
    );
    Ok(())
}
