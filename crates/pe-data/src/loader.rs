//! The loader: a rayon pool decoding and augmenting samples into uint8 NCHW batches, a bounded number
//! of batches ahead of the consumer, deterministic given (seed, epoch) whatever the worker count.
//!
//! How it runs: the epoch's slots come from [`crate::sampler`]; for each batch a job is spawned on the
//! pool, which fills the batch's samples in parallel (`par_chunks_mut`, so idle workers steal samples
//! of the batch in progress before starting the next). At most `prefetch` batches are in flight, so
//! memory does not grow with the data set. Batches come out in order. Each sample's randomness is
//! keyed by (seed, epoch, global position, attempt), never by thread or timing.
//!
//! Bad data never stops a run: an unreadable, truncated or non-image file (or a decoder panic) is
//! recorded, and in training the slot is refilled from another, randomly chosen (keyed) sample; in
//! evaluation it is left out of its batch, so every image is counted once or not at all. The epoch's
//! bad files are reported once, at the end of the epoch (count and the first few paths).
//!
//! Sources ([`crate::source`]): an [`ImageFolder`] (one file per sample, random access) or a
//! [`ShardSet`] of tar shards (streamed by one reader thread per epoch in the order
//! [`crate::shards::plan`] computes; decoding stays on the pool). Every source gives the same
//! batches' shape, transforms, keyed randomness, bad-sample handling and `epoch_from` resume; a
//! shard epoch replaces a bad sample by another of its batch.
//!
//! Host memory: image buffers handed back with [`Loader::recycle`] are reused for later batches.
//! (Pinned memory needs libtorch's allocator, which this crate deliberately does not link.)

use crate::config::{DataConfig, DataFormat};
use crate::error::{Error, Result};
use crate::index::{ImageFolder, IndexCache};
use crate::rng::{Rng, Stream};
use crate::sampler::Sampling;
use crate::shards::source::ShardSource;
use crate::shards::ShardSet;
use crate::source::{BatchSamples, EpochCut, EpochSamples, FolderSource, SampleSource, SplitInfo};
use crate::transforms::{Scratch, Transform};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// How many different files a slot may try before the epoch fails (the data set is then mostly bad).
pub const MAX_ATTEMPTS: u64 = 16;
/// How many bad paths an epoch report lists.
pub const REPORT_FIRST: usize = 5;
/// Default shuffle buffer of a shard loader, in samples (~230 MB of ImageNet JPEGs per rank).
pub const SHUFFLE_BUFFER: usize = 2048;

/// Loader settings that are not augmentation.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Base seed.
    pub seed: u64,
    /// Worker threads (0 = available cores).
    pub workers: usize,
    /// Batches in flight ahead of the consumer.
    pub prefetch: usize,
    /// Shuffle, repeats, rank, world.
    pub sampling: Sampling,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Print the epoch's bad files to stderr at the end of the epoch.
    pub report_bad_files: bool,
    /// Refill the slot of a bad file from another sample (training keeps its batch size); when
    /// false the sample is left out of its batch (evaluation counts every image at most once).
    pub replace_bad_files: bool,
    /// Shard loaders: samples in the shuffle buffer (training only).
    pub shuffle_buffer: usize,
}

impl LoaderOptions {
    /// Training options from the config: shuffled, repeats from `repeated_aug`, last batch dropped.
    pub fn train(cfg: &DataConfig, batch_size: usize, seed: u64, rank: usize, world: usize) -> Self {
        LoaderOptions {
            batch_size,
            seed,
            workers: cfg.workers,
            prefetch: cfg.prefetch,
            sampling: Sampling { shuffle: true, repeats: cfg.repeated_aug, rank, world, pad: true },
            drop_last: true,
            report_bad_files: true,
            replace_bad_files: true,
            shuffle_buffer: SHUFFLE_BUFFER,
        }
    }

    /// Evaluation options: in order, no repeats, no padding (each sample counted once), last
    /// batch kept, bad files left out (not replaced) and reported by the caller with its results.
    pub fn eval(cfg: &DataConfig, batch_size: usize, rank: usize, world: usize) -> Self {
        LoaderOptions {
            sampling: Sampling { shuffle: false, repeats: 1, rank, world, pad: false },
            drop_last: false,
            report_bad_files: false,
            replace_bad_files: false,
            ..Self::train(cfg, batch_size, 0, rank, world)
        }
    }
}

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// The error (I/O or decode).
    pub reason: String,
}

/// One batch: uint8 images `[n, 3, h, w]` and i64 labels `[n]`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `n * 3 * h * w` bytes, NCHW, RGB, not normalised.
    pub images: Vec<u8>,
    /// Class indices.
    pub labels: Vec<i64>,
    /// Dataset index of each sample actually used (after replacements).
    pub indices: Vec<usize>,
    /// Samples in this batch (`batch_size`, or fewer for a kept last batch or when bad files were
    /// left out rather than replaced).
    pub n: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Epoch.
    pub epoch: u64,
    /// Batch number within the epoch (keys the Mixup plan).
    pub index: u64,
    /// Files replaced (or left out) in this batch.
    pub bad_files: Vec<BadFile>,
}

/// The bad files of an epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BadFileReport {
    /// How many files failed.
    pub count: usize,
    /// The first few.
    pub first: Vec<BadFile>,
}

impl std::fmt::Display for BadFileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} unreadable file(s)", self.count)?;
        for b in &self.first {
            write!(f, "; {}: {}", b.path.display(), b.reason)?;
        }
        if self.count > self.first.len() {
            write!(f, "; ...")?;
        }
        Ok(())
    }
}

/// Where a WebDataset scan is cached when no run folder is given: `$XDG_CACHE_HOME/pe/webdataset`
/// (or `~/.cache/pe/webdataset`).
pub fn default_scan_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pe").join("webdataset")
}

/// Which split of a data set to open, and for what.
#[derive(Clone, Copy, Debug)]
pub enum Split<'a> {
    /// `data.train_split`: shuffled, augmented, the last incomplete batch dropped.
    Train { batch_size: usize, seed: u64 },
    /// `data.val_split`, labels numbered by `classes` (the run's list, from its training split or
    /// a checkpoint) or, with `None`, by the split's own classes.
    Eval { batch_size: usize, classes: Option<&'a [String]> },
}

struct Shared {
    source: Box<dyn SampleSource>,
    transform: Transform,
    opts: LoaderOptions,
    recycled: Mutex<Vec<Vec<u8>>>,
}

/// A data loader over one split.
pub struct Loader {
    shared: Arc<Shared>,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("location", &self.location())
            .field("samples", &self.len())
            .field("opts", &self.shared.opts)
            .finish()
    }
}

impl Loader {
    /// A loader over an ImageFolder split, with its own pool of `opts.workers` threads.
    pub fn new(dataset: ImageFolder, transform: Transform, opts: LoaderOptions) -> Result<Self> {
        Self::with_source(Box::new(FolderSource::new(dataset)), transform, opts)
    }

    /// A loader streaming a shard set (see [`crate::shards`]).
    pub fn from_shards(set: ShardSet, transform: Transform, opts: LoaderOptions) -> Result<Self> {
        Self::with_source(Box::new(ShardSource::new(set)), transform, opts)
    }

    /// `split` of the data set `cfg` describes, in its `format`, as rank `rank` of `world` sees it:
    /// `<root>/<split>` as an ImageFolder indexed with the cache beside it, as shards, or the
    /// WebDataset URLs of the split; a WebDataset scan is cached in [`default_scan_cache`].
    pub fn open(cfg: &DataConfig, split: Split, rank: usize, world: usize) -> Result<Self> {
        Self::open_with_cache(cfg, split, rank, world, &default_scan_cache())
    }

    /// As [`Loader::open`], a WebDataset scan cached in `scan_cache` (a run's own folder).
    pub fn open_with_cache(
        cfg: &DataConfig,
        split: Split,
        rank: usize,
        world: usize,
        scan_cache: &std::path::Path,
    ) -> Result<Self> {
        let (name, classes) = match split {
            Split::Train { .. } => (&cfg.train_split, None),
            Split::Eval { classes, .. } => (&cfg.val_split, classes),
        };
        let webdataset = |run_classes| {
            let (key, specs) = match split {
                Split::Train { .. } => ("data.train_urls", &cfg.train_urls),
                Split::Eval { .. } => ("data.val_urls", &cfg.val_urls),
            };
            let request = crate::wds::SplitRequest {
                key,
                specs,
                root: &cfg.root,
                label: &cfg.label_key,
                classes: cfg.classes.as_ref(),
                run_classes,
                retries: cfg.read_retries,
                cache_dir: scan_cache,
                scans: rank == 0,
            };
            crate::wds::open_split(&request)
                .map(|set| Box::new(ShardSource::new(set)) as Box<dyn SampleSource>)
        };
        let source: Box<dyn SampleSource> = match (cfg.format, classes) {
            (DataFormat::Folder, None) => {
                Box::new(FolderSource::new(ImageFolder::open(&cfg.root, name, IndexCache::Beside)?))
            }
            (DataFormat::Folder, Some(classes)) => Box::new(FolderSource::new(
                ImageFolder::open_with_classes(&cfg.root, name, classes, IndexCache::Beside)?,
            )),
            (DataFormat::Shards, classes) => {
                let set = match classes {
                    None => ShardSet::open(&cfg.root, name)?,
                    Some(classes) => ShardSet::open_with_classes(&cfg.root, name, classes)?,
                };
                Box::new(ShardSource::new(set.with_retries(cfg.read_retries)))
            }
            (DataFormat::WebDataset, classes) => webdataset(classes)?,
        };
        let (transform, opts) = match split {
            Split::Train { batch_size, seed } => {
                (Transform::train(cfg)?, LoaderOptions::train(cfg, batch_size, seed, rank, world))
            }
            Split::Eval { batch_size, .. } => {
                (Transform::eval(cfg)?, LoaderOptions::eval(cfg, batch_size, rank, world))
            }
        };
        Self::with_source(source, transform, opts)
    }

    fn with_source(source: Box<dyn SampleSource>, transform: Transform, opts: LoaderOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::Config("batch_size must be > 0".into()));
        }
        if opts.sampling.world == 0 || opts.sampling.rank >= opts.sampling.world {
            return Err(Error::Config(format!(
                "rank {} is not in 0..world ({})",
                opts.sampling.rank, opts.sampling.world
            )));
        }
        let workers = if opts.workers > 0 {
            opts.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("pe-data-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("cannot start {workers} loader threads: {e}")))?;
        let opts = LoaderOptions { prefetch: opts.prefetch.max(1), ..opts };
        Ok(Loader {
            shared: Arc::new(Shared { source, transform, opts, recycled: Mutex::new(Vec::new()) }),
            pool: Arc::new(pool),
        })
    }

    /// The split: its folder, class list and the classes it has no sample of.
    pub fn split(&self) -> &SplitInfo {
        self.shared.source.split()
    }

    /// The run's class list; labels index into it.
    pub fn classes(&self) -> &[String] {
        &self.split().classes
    }

    /// Classes with no sample in this split (warn about these).
    pub fn missing_classes(&self) -> &[String] {
        &self.split().missing_classes
    }

    /// Samples in the split (all ranks).
    pub fn len(&self) -> usize {
        self.shared.source.samples()
    }

    /// What the split holds, wherever and however it is stored (`None` for shard sets written
    /// before the fingerprint was recorded).
    pub fn fingerprint(&self) -> Option<String> {
        self.shared.source.fingerprint()
    }

    /// True when the split has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where dataset sample `index` (a [`Batch::indices`] entry) is: its file, or
    /// `shard.tar#member`.
    pub fn sample_path(&self, index: usize) -> PathBuf {
        self.shared.source.sample_path(index)
    }

    /// Whether samples are files (an image folder), so their names can key a label file.
    pub fn has_files(&self) -> bool {
        self.shared.source.has_files()
    }

    /// The split folder (image folder or shard folder).
    pub fn location(&self) -> &std::path::Path {
        &self.split().dir
    }

    /// The per-sample transform.
    pub fn transform(&self) -> &Transform {
        &self.shared.transform
    }

    /// Worker threads in the pool.
    pub fn workers(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Samples this rank sees per epoch.
    pub fn samples_per_epoch(&self) -> usize {
        self.shared.source.samples_per_epoch(self.shared.opts.sampling)
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples_per_epoch();
        let b = self.shared.opts.batch_size;
        if self.shared.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Hand an image buffer back for reuse by later batches.
    pub fn recycle(&self, images: Vec<u8>) {
        if let Ok(mut r) = self.shared.recycled.lock() {
            if r.len() < self.shared.opts.prefetch + 2 {
                r.push(images);
            }
        }
    }

    /// How many handed-back image buffers wait for reuse (at most `prefetch + 2`).
    pub fn spare_buffers(&self) -> usize {
        self.shared.recycled.lock().map_or(0, |r| r.len())
    }

    /// Iterate over epoch `epoch`'s batches.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on, numbered as in the full epoch: a resumed run
    /// continues mid-epoch without decoding the batches it already trained on.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochIter {
        let o = &self.shared.opts;
        let cut = EpochCut {
            seed: o.seed,
            epoch,
            sampling: o.sampling,
            batch_size: o.batch_size,
            drop_last: o.drop_last,
            start,
            shuffle_buffer: o.shuffle_buffer,
        };
        let (start, feed) = self.shared.source.epoch(&cut);
        EpochIter {
            shared: Arc::clone(&self.shared),
            pool: Arc::clone(&self.pool),
            epoch,
            feed,
            next_index: start as u64,
            pending: VecDeque::new(),
            cancel: Arc::new(AtomicBool::new(false)),
            report: BadFileReport::default(),
            finished: false,
        }
    }
}

/// The batches of one epoch, in order. Dropping it cancels the batches not yet started.
pub struct EpochIter {
    shared: Arc<Shared>,
    pool: Arc<rayon::ThreadPool>,
    epoch: u64,
    feed: Box<dyn EpochSamples>,
    next_index: u64,
    pending: VecDeque<mpsc::Receiver<Result<Batch>>>,
    cancel: Arc<AtomicBool>,
    report: BadFileReport,
    finished: bool,
}

impl EpochIter {
    /// Bad files seen so far in this epoch.
    pub fn bad_files(&self) -> &BadFileReport {
        &self.report
    }

    /// Batches not yet returned.
    pub fn remaining(&self) -> usize {
        self.feed.remaining() + self.pending.len()
    }

    fn launch(&mut self) {
        while self.pending.len() < self.shared.opts.prefetch {
            let Some(work) = self.feed.next_batch() else { break };
            let (tx, rx) = mpsc::sync_channel(1);
            let (shared, cancel, epoch, index) =
                (Arc::clone(&self.shared), Arc::clone(&self.cancel), self.epoch, self.next_index);
            self.next_index += 1;
            self.pool.spawn(move || {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let _ = tx.send(build_batch(&shared, epoch, index, work.as_ref()));
            });
            self.pending.push_back(rx);
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.launch();
        let Some(rx) = self.pending.pop_front() else {
            if !self.finished {
                self.finished = true;
                if self.shared.opts.report_bad_files && self.report.count > 0 {
                    let fate = if self.shared.opts.replace_bad_files { "replaced" } else { "left out" };
                    tracing::warn!(
                        "{} epoch {}: {} {fate}",
                        self.shared.source.split().dir.display(),
                        self.epoch + 1,
                        self.report
                    );
                }
            }
            return None;
        };
        self.launch();
        let result = rx.recv().unwrap_or(Err(Error::WorkerStopped));
        if let Ok(b) = &result {
            self.report.count += b.bad_files.len();
            for f in &b.bad_files {
                if self.report.first.len() < REPORT_FIRST {
                    self.report.first.push(f.clone());
                }
            }
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// What filling one slot gave: the sample used (`None` when a bad file was left out) and the bad
/// files met on the way.
struct SampleOut {
    used: Option<(i64, usize)>,
    bad: Vec<BadFile>,
}

fn build_batch(shared: &Shared, epoch: u64, index: u64, work: &dyn BatchSamples) -> Result<Batch> {
    if let Some(reason) = work.fatal() {
        return Err(Error::Unreadable(reason));
    }
    let t = &shared.transform;
    let per = t.sample_len();
    let n = work.slots();
    let mut images = shared
        .recycled
        .lock()
        .ok()
        .and_then(|mut r| r.iter().position(|v| v.capacity() >= per * n).map(|i| r.swap_remove(i)))
        .unwrap_or_default();
    images.resize(per * n, 0);
    let outs: Vec<Result<SampleOut>> = images
        .par_chunks_mut(per)
        .enumerate()
        .map(|(slot, out)| fill_slot(shared, epoch, work, slot, out))
        .collect();
    let mut batch = Batch {
        images,
        labels: Vec::with_capacity(n),
        indices: Vec::with_capacity(n),
        n: 0,
        h: t.img_size,
        w: t.img_size,
        epoch,
        index,
        bad_files: Vec::new(),
    };
    for (slot, o) in outs.into_iter().enumerate() {
        let o = o?;
        batch.bad_files.extend(o.bad);
        let Some((label, sample)) = o.used else { continue };
        // Slots of left-out samples close up, so the batch holds its `n` samples at its front.
        if slot != batch.n {
            batch.images.copy_within(slot * per..(slot + 1) * per, batch.n * per);
        }
        batch.labels.push(label);
        batch.indices.push(sample);
        batch.n += 1;
    }
    batch.images.truncate(batch.n * per);
    Ok(batch)
}

/// Decode and augment `bytes` into `out` with this thread's scratch buffers, catching decoder panics.
fn transform_bytes(shared: &Shared, bytes: &[u8], rng: &mut Rng, out: &mut [u8]) -> Result<(), String> {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let scratch = guard.get_or_insert_with(|| Scratch::new(shared.transform.decoder));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.transform.apply(bytes, rng, scratch, out).map_err(|e| e.to_string())
        }));
        r.unwrap_or_else(|_| {
            // A decoder panicked: its buffers may be inconsistent, so start this thread afresh.
            *guard = None;
            Err("decoder panicked".into())
        })
    })
}

/// Fills `slot` of `work` into `out`. A bad candidate is left out, or (`replace_bad_files`)
/// replaced by a keyed random other one of the batch's candidates, up to [`MAX_ATTEMPTS`] tries:
/// the result depends only on (seed, epoch, position), never on which thread ran it.
fn fill_slot(
    shared: &Shared,
    epoch: u64,
    work: &dyn BatchSamples,
    slot: usize,
    out: &mut [u8],
) -> Result<SampleOut> {
    let seed = shared.opts.seed;
    let position = work.position(slot);
    let mut candidate = work.planned(slot);
    let mut bad = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        let mut rng = Rng::keyed(Stream::Sample, &[seed, epoch, position, attempt]);
        match work.read(candidate, &mut |bytes| transform_bytes(shared, bytes, &mut rng, out)) {
            Ok(used) => return Ok(SampleOut { used: Some(used), bad }),
            Err(file) => bad.push(file),
        }
        if !shared.opts.replace_bad_files {
            return Ok(SampleOut { used: None, bad });
        }
        candidate = Rng::keyed(Stream::Replace, &[seed, epoch, position, attempt])
            .below(work.candidates() as u64) as usize;
    }
    too_many(bad)
}

fn too_many(mut bad: Vec<BadFile>) -> Result<SampleOut> {
    let last = bad.pop().unwrap_or(BadFile { path: PathBuf::new(), reason: String::new() });
    Err(Error::TooManyBadFiles { attempts: MAX_ATTEMPTS as usize, path: last.path, reason: last.reason })
}
