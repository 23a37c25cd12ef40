//! Each shard's sample count, which the epoch plan needs before the first sample is read, found the
//! cheapest way the dataset allows:
//!
//! 1. its own metadata beside the shards (or in `data.root`): timm's `_info.json`
//!    (`splits.<name>.filenames` / `shard_lengths`, optional `num_classes` / `classes`) or open_clip's
//!    `sizes.json` (`{"shard.tar": count}`);
//! 2. an earlier scan of the same URL list, cached in the run folder (never beside the data, which may
//!    be read-only or remote);
//! 3. a scan: every shard read once, front to back, a few at a time, by rank 0 only (the other ranks
//!    wait for its cache file); its result is that cache.

use super::open::read_small;
use super::retry::open_retrying;
use super::urls::ShardUrl;
use super::{numbered, SplitRequest};
use crate::error::{Error, IoContext, Result};
use crate::shards::read::{walk_tar, Walk};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shards read at once by a scan (remote reads are latency-bound).
const SCAN_THREADS: usize = 8;
/// How long the other ranks wait for rank 0's scan.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// What was found, and where.
pub struct Found {
    pub counts: Vec<usize>,
    /// Class names, when the source says (numbered when it gives only a count).
    pub classes: Option<Vec<String>>,
    /// The metadata file, or the scan, for messages.
    pub from: String,
}

/// The counts of `urls`, from metadata, the scan cache, or a scan.
pub fn find(urls: &[ShardUrl], req: &SplitRequest) -> Result<Found> {
    if let Some(found) = from_metadata(urls, req)? {
        return Ok(found);
    }
    let cache = req.cache_dir.join(format!("{}-{}.json", req.key.replace('.', "_"), list_hash(urls, req)));
    if let Some(found) = cached(&cache, urls) {
        return Ok(found);
    }
    if !req.scans {
        return wait_for_scan(&cache, urls, req);
    }
    tracing::info!(
        "scanning {} shard(s) of {} once to count their samples (no _info.json or sizes.json beside them); \
         the counts are cached in {}",
        urls.len(),
        req.key,
        cache.display()
    );
    let scanned = scan(urls, req)?;
    let text = serde_json::to_string_pretty(&scanned).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::create_dir_all(req.cache_dir).io_ctx("create directory", req.cache_dir)?;
    crate::atomic_file::write(&cache, text)?;
    Ok(scanned.found(format!("the scan cached in {}", cache.display())))
}

/// Another rank's scan: its cache file, once written (atomically, so it is whole when it appears).
fn wait_for_scan(cache: &std::path::Path, urls: &[ShardUrl], req: &SplitRequest) -> Result<Found> {
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = cached(cache, urls) {
            return Ok(found);
        }
        if started.elapsed() > SCAN_WAIT {
            return Err(Error::Unreadable(format!(
                "{}: rank 0's scan did not write {} within {} s (is logging.runs_dir shared by every rank?)",
                req.key,
                cache.display(),
                SCAN_WAIT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// timm's `_info.json` (the parts read here).
#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    splits: HashMap<String, InfoSplit>,
    #[serde(default)]
    num_classes: Option<usize>,
    #[serde(default)]
    classes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct InfoSplit {
    filenames: Vec<String>,
    shard_lengths: Vec<usize>,
}

fn from_metadata(urls: &[ShardUrl], req: &SplitRequest) -> Result<Option<Found>> {
    let root = req.root.to_string_lossy();
    let mut places: Vec<String> = urls[0].folder().into_iter().collect();
    if !root.is_empty() && !root.starts_with("pipe:") {
        places.push(format!("{}/", root.trim_end_matches('/')));
    }
    places.dedup();
    for base in places {
        for name in ["_info.json", "sizes.json"] {
            let Some(file) = ShardUrl::parse(&format!("{base}{name}"), "").ok() else { continue };
            let Some(bytes) = read_small(&file).map_err(|e| Error::Unreadable(format!("{file}: {e}")))?
            else {
                continue;
            };
            let bad = |reason: String| Error::Format { path: PathBuf::from(file.to_string()), reason };
            let (lengths, classes) = if name == "_info.json" {
                let info: Info = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                let mut lengths = HashMap::new();
                for split in info.splits.values() {
                    lengths.extend(split.filenames.iter().cloned().zip(split.shard_lengths.iter().copied()));
                }
                (lengths, info.classes.or(info.num_classes.map(numbered)))
            } else {
                (serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?, None)
            };
            let counts: Option<Vec<usize>> = urls
                .iter()
                .map(|url| {
                    let relative = url.relative_to(&base)?;
                    let file_name = relative.rsplit('/').next().unwrap_or(&relative).to_string();
                    lengths.get(&relative).or_else(|| lengths.get(&file_name)).copied()
                })
                .collect();
            match counts {
                Some(counts) => return Ok(Some(Found { counts, classes, from: file.to_string() })),
                None => tracing::warn!("{file} does not list every shard of {}; not using it", req.key),
            }
        }
    }
    Ok(None)
}

/// A scan's result, as cached.
#[derive(Serialize, Deserialize)]
struct Scanned {
    shards: Vec<String>,
    counts: Vec<usize>,
    /// The largest label seen (`None` when the shards hold no sample).
    max_label: Option<u32>,
}

impl Scanned {
    fn found(self, from: String) -> Found {
        let classes = self.max_label.map(|m| numbered(m as usize + 1));
        Found { counts: self.counts, classes, from }
    }
}

fn cached(path: &std::path::Path, urls: &[ShardUrl]) -> Option<Found> {
    let scanned: Scanned = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let same = scanned.shards.len() == urls.len()
        && scanned.shards.iter().zip(urls).all(|(a, b)| *a == b.to_string());
    (same && scanned.counts.len() == urls.len())
        .then(|| scanned.found(format!("the scan cached in {}", path.display())))
}

/// Count every shard's samples and the largest label, reading `SCAN_THREADS` shards at once.
fn scan(urls: &[ShardUrl], req: &SplitRequest) -> Result<Scanned> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Counted>>> = Mutex::new(vec![None; urls.len()]);
    std::thread::scope(|scope| {
        for _ in 0..SCAN_THREADS.min(urls.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(i) else { return };
                let counted = count_shard(url, req);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(counted);
            });
        }
    });
    let (mut counts, mut max_label) = (Vec::with_capacity(urls.len()), None);
    for (url, result) in urls.iter().zip(results.into_inner().unwrap_or_else(|p| p.into_inner())) {
        let (count, max) = result
            .unwrap_or_else(|| Err("not scanned".into()))
            .map_err(|e| Error::Unreadable(format!("scanning {url}: {e}")))?;
        counts.push(count);
        max_label = max_label.max(max);
    }
    Ok(Scanned { shards: urls.iter().map(ToString::to_string).collect(), counts, max_label })
}

/// A shard's samples and largest label, or why it could not be read.
type Counted = std::result::Result<(usize, Option<u32>), String>;

fn count_shard(url: &ShardUrl, req: &SplitRequest) -> Counted {
    let (stream, gave_up) = open_retrying(url, req.retries);
    let (mut samples, mut max_label) = (0, None);
    let walked = walk_tar(stream, req.label, |_, parsed| match parsed {
        None => Walk::Read,
        Some(parsed) => {
            samples += 1;
            max_label = max_label.max(parsed.ok().map(|(_, label)| label));
            Walk::Skip
        }
    });
    if let Some(reason) = gave_up.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(reason);
    }
    walked.map(|()| (samples, max_label))
}

/// FNV-1a of the URL list and label key: the cache file of exactly this list.
fn list_hash(urls: &[ShardUrl], req: &SplitRequest) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let label = String::from(req.label.clone());
    for part in urls.iter().map(ToString::to_string).chain([label]) {
        for byte in part.bytes().chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}
