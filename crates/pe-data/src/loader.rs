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
//! Sources: an [`ImageFolder`] (one file per sample, random access) or a [`ShardSet`] of tar shards
//! (streamed by one reader thread per epoch in the order [`crate::shards::plan`] computes; decoding
//! stays on the pool). Both give the same batches' shape, transforms, keyed randomness, bad-sample
//! handling and `epoch_from` resume; a shard epoch replaces a bad sample by another of its batch.
//!
//! Host memory: image buffers handed back with [`Loader::recycle`] are reused for later batches.
//! (Pinned memory needs libtorch's allocator, which this crate deliberately does not link.)

use crate::config::{DataConfig, DataFormat};
use crate::error::{Error, Result};
use crate::index::{ImageFolder, IndexCache};
use crate::rng::{Rng, Stream};
use crate::sampler::{epoch_slots, Sampling, Slot};
use crate::shards::feed::{Feed, Item};
use crate::shards::{epoch_plan, ShardSet};
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

/// Where samples come from.
enum Source {
    Folder(ImageFolder),
    /// The shard set, and an [`ImageFolder`] with its directory and classes only (for `dataset()`).
    Shards(Arc<ShardSet>, ImageFolder),
}

struct Shared {
    source: Source,
    transform: Transform,
    opts: LoaderOptions,
    recycled: Mutex<Vec<Vec<u8>>>,
}

/// A data loader over one ImageFolder split.
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
    /// A loader with its own pool of `opts.workers` threads.
    pub fn new(dataset: ImageFolder, transform: Transform, opts: LoaderOptions) -> Result<Self> {
        Self::with_source(Source::Folder(dataset), transform, opts)
    }

    /// A loader streaming a shard set (see [`crate::shards`]).
    pub fn from_shards(set: ShardSet, transform: Transform, opts: LoaderOptions) -> Result<Self> {
        let meta = ImageFolder {
            dir: set.dir.clone(),
            classes: set.classes.clone(),
            missing_classes: set.missing_classes.clone(),
            samples: Vec::new(),
            source: crate::index::IndexSource::Cache,
        };
        Self::with_source(Source::Shards(Arc::new(set), meta), transform, opts)
    }

    fn with_source(source: Source, transform: Transform, opts: LoaderOptions) -> Result<Self> {
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

    /// The training loader of `cfg`: `<root>/<train_split>`, an ImageFolder indexed with the cache
    /// beside it, or shards when `cfg.format` says so.
    pub fn train(cfg: &DataConfig, batch_size: usize, seed: u64, rank: usize, world: usize) -> Result<Self> {
        if cfg.format == DataFormat::Shards {
            return Self::train_shards(cfg, batch_size, seed, rank, world);
        }
        let ds = ImageFolder::open(&cfg.root, &cfg.train_split, IndexCache::Beside)?;
        Self::new(ds, Transform::train(cfg)?, LoaderOptions::train(cfg, batch_size, seed, rank, world))
    }

    /// The evaluation loader of `cfg`: `<root>/<val_split>`.
    pub fn eval(cfg: &DataConfig, batch_size: usize, rank: usize, world: usize) -> Result<Self> {
        if cfg.format == DataFormat::Shards {
            return Self::eval_shards(cfg, batch_size, rank, world, None);
        }
        let ds = ImageFolder::open(&cfg.root, &cfg.val_split, IndexCache::Beside)?;
        Self::new(ds, Transform::eval(cfg)?, LoaderOptions::eval(cfg, batch_size, rank, world))
    }

    /// The evaluation loader of `cfg` with labels numbered by the run's class list (from the training
    /// split or a checkpoint): see [`ImageFolder::open_with_classes`]. Warn about
    /// `dataset().missing_classes`.
    pub fn eval_with_classes(
        cfg: &DataConfig,
        batch_size: usize,
        rank: usize,
        world: usize,
        classes: &[String],
    ) -> Result<Self> {
        if cfg.format == DataFormat::Shards {
            return Self::eval_shards(cfg, batch_size, rank, world, Some(classes));
        }
        let ds = ImageFolder::open_with_classes(&cfg.root, &cfg.val_split, classes, IndexCache::Beside)?;
        Self::new(ds, Transform::eval(cfg)?, LoaderOptions::eval(cfg, batch_size, rank, world))
    }

    /// The training loader over the shard set at `cfg.root` (written by `pe prepare shards`).
    pub fn train_shards(
        cfg: &DataConfig,
        batch_size: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        let set = ShardSet::open(&cfg.root, &cfg.train_split)?;
        Self::from_shards(
            set,
            Transform::train(cfg)?,
            LoaderOptions::train(cfg, batch_size, seed, rank, world),
        )
    }

    /// The evaluation loader over the shard set at `cfg.root`, labels numbered by `classes` (the run's
    /// class list) or, with `None`, by the shard index's own list.
    pub fn eval_shards(
        cfg: &DataConfig,
        batch_size: usize,
        rank: usize,
        world: usize,
        classes: Option<&[String]>,
    ) -> Result<Self> {
        let set = match classes {
            Some(c) => ShardSet::open_with_classes(&cfg.root, &cfg.val_split, c)?,
            None => ShardSet::open(&cfg.root, &cfg.val_split)?,
        };
        Self::from_shards(set, Transform::eval(cfg)?, LoaderOptions::eval(cfg, batch_size, rank, world))
    }

    /// The indexed data set. For a shard loader only its directory and classes are filled in (no
    /// samples): prefer [`Loader::classes`], [`Loader::len`] and [`Loader::location`].
    pub fn dataset(&self) -> &ImageFolder {
        match &self.shared.source {
            Source::Folder(f) => f,
            Source::Shards(_, meta) => meta,
        }
    }

    /// The run's class list; labels index into it.
    pub fn classes(&self) -> &[String] {
        &self.dataset().classes
    }

    /// Classes with no sample in this split (warn about these).
    pub fn missing_classes(&self) -> &[String] {
        &self.dataset().missing_classes
    }

    /// Samples in the split (all ranks).
    pub fn len(&self) -> usize {
        match &self.shared.source {
            Source::Folder(f) => f.len(),
            Source::Shards(s, _) => s.len(),
        }
    }

    /// True when the split has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The split folder (image folder or shard folder).
    pub fn location(&self) -> &std::path::Path {
        &self.dataset().dir
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
        let s = self.shared.opts.sampling;
        match &self.shared.source {
            Source::Folder(f) => epoch_slots(f.len(), 0, 0, s).len(),
            Source::Shards(set, _) => epoch_plan(&set.counts(), 0, 0, s, 0).len(),
        }
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
        let (feed, start) = match &self.shared.source {
            Source::Folder(f) => {
                let slots = epoch_slots(f.len(), o.seed, epoch, o.sampling);
                let batches = self.batches_from(&slots, start);
                (BatchFeed::Slots(batches.1.into()), batches.0)
            }
            Source::Shards(set, _) => {
                let plan = epoch_plan(&set.counts(), o.seed, epoch, o.sampling, o.shuffle_buffer);
                let (start, batches) = self.batches_from(&plan, start);
                let channel = (2 * o.batch_size).max(64);
                (BatchFeed::Shards(Feed::start(Arc::clone(set), batches, channel)), start)
            }
        };
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

    /// The epoch's batches from batch `start` on (the incomplete last one dropped if so configured).
    fn batches_from<T: Clone>(&self, order: &[T], start: usize) -> (usize, Vec<Vec<T>>) {
        let o = &self.shared.opts;
        let mut batches: Vec<Vec<T>> = order.chunks(o.batch_size).map(<[T]>::to_vec).collect();
        if o.drop_last && batches.last().is_some_and(|b| b.len() < o.batch_size) {
            batches.pop();
        }
        let start = start.min(batches.len());
        batches.drain(..start);
        (start, batches)
    }
}

/// Where an epoch's batches come from.
enum BatchFeed {
    Slots(VecDeque<Vec<Slot>>),
    Shards(Feed),
}

/// One batch's samples, ready for the pool.
enum Work {
    Slots(Vec<Slot>),
    Items(Vec<Item>),
}

impl BatchFeed {
    fn next(&mut self) -> Option<Work> {
        match self {
            BatchFeed::Slots(b) => b.pop_front().map(Work::Slots),
            BatchFeed::Shards(f) => f.next_batch().map(Work::Items),
        }
    }

    fn remaining(&self) -> usize {
        match self {
            BatchFeed::Slots(b) => b.len(),
            BatchFeed::Shards(f) => f.remaining(),
        }
    }
}

/// The batches of one epoch, in order. Dropping it cancels the batches not yet started.
pub struct EpochIter {
    shared: Arc<Shared>,
    pool: Arc<rayon::ThreadPool>,
    epoch: u64,
    feed: BatchFeed,
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
            let Some(work) = self.feed.next() else { break };
            let (tx, rx) = mpsc::sync_channel(1);
            let (shared, cancel, epoch, index) =
                (Arc::clone(&self.shared), Arc::clone(&self.cancel), self.epoch, self.next_index);
            self.next_index += 1;
            self.pool.spawn(move || {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let _ = tx.send(build_batch(&shared, epoch, index, &work));
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
                        self.shared.location().display(),
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
    /// The file bytes of the sample being read on this thread, reused so that a read costs no
    /// allocation (and no fresh pages) per file.
    static FILE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Read all of `path` into this thread's file buffer and hand the bytes to `f`.
fn with_file_bytes<T>(path: &std::path::Path, f: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    use std::io::Read;
    FILE_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        let mut file = std::fs::File::open(path)?;
        if let Ok(meta) = file.metadata() {
            buf.reserve(meta.len() as usize);
        }
        file.read_to_end(&mut buf)?;
        Ok(f(&buf))
    })
}

/// What filling one slot gave: the sample used (`None` when a bad file was left out) and the bad
/// files met on the way.
struct SampleOut {
    used: Option<(i64, usize)>,
    bad: Vec<BadFile>,
}

impl Shared {
    fn location(&self) -> &std::path::Path {
        match &self.source {
            Source::Folder(f) => &f.dir,
            Source::Shards(_, meta) => &meta.dir,
        }
    }
}

fn build_batch(shared: &Shared, epoch: u64, index: u64, work: &Work) -> Result<Batch> {
    let t = &shared.transform;
    let per = t.sample_len();
    let n = match work {
        Work::Slots(s) => s.len(),
        Work::Items(s) => s.len(),
    };
    let mut images = shared
        .recycled
        .lock()
        .ok()
        .and_then(|mut r| r.iter().position(|v| v.capacity() >= per * n).map(|i| r.swap_remove(i)))
        .unwrap_or_default();
    images.resize(per * n, 0);
    let outs: Vec<Result<SampleOut>> = match (work, &shared.source) {
        (Work::Slots(slots), Source::Folder(ds)) => images
            .par_chunks_mut(per)
            .zip(slots.par_iter())
            .map(|(out, slot)| load_file(shared, ds, epoch, *slot, out))
            .collect(),
        (Work::Items(items), _) => images
            .par_chunks_mut(per)
            .enumerate()
            .map(|(k, out)| load_item(shared, epoch, items, k, out))
            .collect(),
        (Work::Slots(_), Source::Shards(..)) => {
            vec![Err(Error::Config("slots given to a shard loader".into()))]
        }
    };
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

/// A folder sample; an unreadable file is replaced by a keyed random other file of the data set.
fn load_file(shared: &Shared, ds: &ImageFolder, epoch: u64, slot: Slot, out: &mut [u8]) -> Result<SampleOut> {
    fill_slot(shared, epoch, slot.position, slot.index, ds.len(), out, |index, rng, out| {
        let (path, label) = &ds.samples[index];
        with_file_bytes(path, |bytes| transform_bytes(shared, bytes, rng, out))
            .map_err(|e| format!("read: {e}"))
            .and_then(|r| r)
            .map(|()| (*label as i64, index))
            .map_err(|reason| BadFile { path: path.clone(), reason })
    })
}

/// A shard sample (`items[k]`); a bad one is replaced by a keyed random other sample of the batch
/// (a stream has no random access), so the result still depends only on (seed, epoch, position).
fn load_item(shared: &Shared, epoch: u64, items: &[Item], k: usize, out: &mut [u8]) -> Result<SampleOut> {
    fill_slot(shared, epoch, items[k].position, k, items.len(), out, |pick, rng, out| {
        let item = &items[pick];
        item.sample
            .as_ref()
            .map_err(String::clone)
            .and_then(|s| transform_bytes(shared, &s.bytes, rng, out).map(|()| (s.label as i64, s.index)))
            .map_err(|reason| BadFile { path: item.name.clone(), reason })
    })
}

/// Fills the slot at `position` from candidate `first` with `try_one(candidate, rng, out)`. A bad
/// candidate is left out, or (`replace_bad_files`) replaced by a keyed random other one of
/// `0..candidates`, up to [`MAX_ATTEMPTS`] tries: the result depends only on (seed, epoch, position).
fn fill_slot(
    shared: &Shared,
    epoch: u64,
    position: u64,
    first: usize,
    candidates: usize,
    out: &mut [u8],
    try_one: impl Fn(usize, &mut Rng, &mut [u8]) -> std::result::Result<(i64, usize), BadFile>,
) -> Result<SampleOut> {
    let seed = shared.opts.seed;
    let mut candidate = first;
    let mut bad = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        let mut rng = Rng::keyed(Stream::Sample, &[seed, epoch, position, attempt]);
        match try_one(candidate, &mut rng, out) {
            Ok(used) => return Ok(SampleOut { used: Some(used), bad }),
            Err(file) => bad.push(file),
        }
        if !shared.opts.replace_bad_files {
            return Ok(SampleOut { used: None, bad });
        }
        candidate =
            Rng::keyed(Stream::Replace, &[seed, epoch, position, attempt]).below(candidates as u64) as usize;
    }
    too_many(bad)
}

fn too_many(mut bad: Vec<BadFile>) -> Result<SampleOut> {
    let last = bad.pop().unwrap_or(BadFile { path: PathBuf::new(), reason: String::new() });
    Err(Error::TooManyBadFiles { attempts: MAX_ATTEMPTS as usize, path: last.path, reason: last.reason })
}
