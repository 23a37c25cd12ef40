//! Folder vs shard loader throughput on the same images: one warm-up epoch each, then timed epochs,
//! alternating so both see the same machine state; prints one JSON line per (format, epoch).
//!
//! Usage: `shards_bench <folder root> <shard root> <train-basic|eval> <workers> [batch=64] [epochs=2]
//! [URL...]` (the shard root written from the folder root by `pe prepare shards`). Each URL is a copy of
//! the shard root elsewhere (`s3://bucket/prefix`, `http://host/dir`), read as `format = "webdataset"`
//! with the same shard list: a remote row beside the local ones.

use pe_data::config::DataConfig;
use pe_data::index::{ImageFolder, IndexCache};
use pe_data::loader::{Loader, LoaderOptions};
use pe_data::shards::ShardSet;
use pe_data::wds::{open_split, ShardList, SplitRequest};
use pe_data::Transform;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err(
            "usage: shards_bench <folder root> <shard root> <train-basic|eval> <workers> [batch] [epochs]"
                .into(),
        );
    }
    let (folder_root, shard_root, pipeline) =
        (std::path::PathBuf::from(&a[1]), std::path::PathBuf::from(&a[2]), a[3].as_str());
    let workers: usize = a[4].parse()?;
    let batch: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let epochs: u64 = a.get(6).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let cfg = DataConfig { root: folder_root.clone(), workers, color_jitter: 0.0, ..Default::default() };
    let (transform, opts) = match pipeline {
        "train-basic" => (Transform::train(&cfg)?, LoaderOptions::train(&cfg, batch, 0, 0, 1)),
        "eval" => (Transform::eval(&cfg)?, LoaderOptions::eval(&cfg, batch, 0, 1)),
        other => return Err(format!("unknown pipeline {other}").into()),
    };
    let opts = LoaderOptions { drop_last: false, ..opts };
    let folder = ImageFolder::open(&folder_root, "train", IndexCache::Off)?;
    let set = ShardSet::open(&shard_root, "train")?;
    let shard_list = ShardList(set.shards.iter().map(|s| format!("train/{}", s.file)).collect());
    let mut opens = vec![("folder".to_string(), folder.len()), ("shards".to_string(), set.shards.len())];
    let mut loaders = vec![
        Loader::new(folder, transform.clone(), opts.clone())?,
        Loader::from_shards(set, transform.clone(), opts.clone())?,
    ];
    for url in a.iter().skip(7) {
        let root = std::path::PathBuf::from(url);
        let request = SplitRequest {
            key: "bench",
            specs: &shard_list,
            root: &root,
            label: &cfg.label_key,
            classes: None,
            run_classes: None,
            retries: cfg.read_retries,
            cache_dir: &std::env::temp_dir(),
            scans: true,
        };
        let remote = open_split(&request)?;
        opens.push((format!("webdataset {}", url.split("://").next().unwrap_or(url)), remote.shards.len()));
        loaders.push(Loader::from_shards(remote, transform.clone(), opts.clone())?);
    }
    let run = |l: &Loader, epoch: u64| -> Result<(usize, f64), pe_data::Error> {
        let start = Instant::now();
        let mut n = 0;
        for b in l.epoch(epoch) {
            let b = b?;
            n += b.n;
            l.recycle(b.images);
        }
        Ok((n, start.elapsed().as_secs_f64()))
    };
    for l in &loaders {
        run(l, 0)?;
    }
    for epoch in 1..=epochs {
        for (l, (format, files)) in loaders.iter().zip(&opens) {
            let (n, secs) = run(l, epoch)?;
            println!(
                "{{\"format\": \"{format}\", \"pipeline\": \"{pipeline}\", \"workers\": {workers}, \"epoch\": {epoch}, \
                 \"images\": {n}, \"seconds\": {secs:.3}, \"img_per_s\": {:.1}, \"files_opened\": {files}}}",
                n as f64 / secs
            );
        }
    }
    Ok(())
}
