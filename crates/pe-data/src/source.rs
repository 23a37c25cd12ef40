//! Where a loader's samples come from. A [`SampleSource`] knows its split (folder, class list),
//! orders one epoch for one rank into batches, and hands each batch to the decode pool as
//! [`BatchSamples`]: per slot a position (which keys its randomness) and candidates to read, the
//! first planned and others to replace it with when it is bad. The loader's pool, transforms,
//! retries and buffers are the same whatever the source: a folder of files ([`FolderSource`]), tar
//! shards (`crate::shards::source`), and any later one implement these two traits.

use std::path::PathBuf;
use std::sync::Arc;

use crate::index::ImageFolder;
use crate::loader::BadFile;
use crate::sampler::{epoch_slots, Sampling, Slot};

/// What a split is, whatever holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitInfo {
    /// The split's folder (image folder or shard folder), for messages.
    pub dir: PathBuf,
    /// The run's class list; labels index into it.
    pub classes: Vec<String>,
    /// Classes of the list with no sample in this split (warn about these).
    pub missing_classes: Vec<String>,
}

/// How an epoch is cut into batches.
#[derive(Clone, Copy, Debug)]
pub struct EpochCut {
    pub seed: u64,
    pub epoch: u64,
    pub sampling: Sampling,
    pub batch_size: usize,
    pub drop_last: bool,
    /// The first batch to hand out (a resumed epoch skips those already trained on).
    pub start: usize,
    /// Shard sources: samples in the shuffle buffer.
    pub shuffle_buffer: usize,
}

/// A split the loader can read.
pub trait SampleSource: Send + Sync {
    fn split(&self) -> &SplitInfo;
    /// Samples in the split (all ranks).
    fn samples(&self) -> usize;
    /// Where sample `index` is: its file, or `shard.tar#member` (for predictions files and
    /// file-name keyed label sets).
    fn sample_path(&self, index: usize) -> PathBuf;
    /// Whether [`SampleSource::sample_path`] names real files (whose names may key labels).
    fn has_files(&self) -> bool;
    /// What the split holds, independent of where and how it is stored (see
    /// [`ImageFolder::fingerprint`]); `None` when the source cannot say.
    fn fingerprint(&self) -> Option<String>;
    /// Samples rank `sampling.rank` sees in an epoch.
    fn samples_per_epoch(&self, sampling: Sampling) -> usize;
    /// The epoch's batches from `cut.start` on (the first one's number is `cut.start`, or fewer
    /// when the epoch has fewer batches).
    fn epoch(&self, cut: &EpochCut) -> (usize, Box<dyn EpochSamples>);
}

/// One epoch's batches, in order.
pub trait EpochSamples: Send {
    fn next_batch(&mut self) -> Option<Box<dyn BatchSamples>>;
    /// Batches not yet handed out.
    fn remaining(&self) -> usize;
}

/// One batch's samples, read by the decode workers (several slots at once).
pub trait BatchSamples: Send + Sync {
    /// Slots in the batch.
    fn slots(&self) -> usize;
    /// The slot's position in the all-rank epoch order (keys its randomness).
    fn position(&self, slot: usize) -> u64;
    /// The candidate planned for the slot.
    fn planned(&self, slot: usize) -> usize;
    /// Candidates a bad one may be replaced by (`0..candidates()`).
    fn candidates(&self) -> usize;
    /// Why the batch cannot be built at all (its source could not be read), if so.
    fn fatal(&self) -> Option<String> {
        None
    }
    /// Hands candidate `candidate`'s encoded bytes to `decode`; returns its (label, dataset
    /// index), or the bad file and why (unreadable, or `decode`'s error).
    fn read(
        &self,
        candidate: usize,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(i64, usize), BadFile>;
}

/// `order` cut into batches of `cut.batch_size` (the incomplete last one dropped if so cut), from
/// batch `cut.start` on; returns the first batch's number too.
pub fn cut_into_batches<T: Clone>(order: &[T], cut: &EpochCut) -> (usize, Vec<Vec<T>>) {
    let mut batches: Vec<Vec<T>> = order.chunks(cut.batch_size).map(<[T]>::to_vec).collect();
    if cut.drop_last && batches.last().is_some_and(|b| b.len() < cut.batch_size) {
        batches.pop();
    }
    let start = cut.start.min(batches.len());
    batches.drain(..start);
    (start, batches)
}

/// An [`ImageFolder`]: one file per sample, random access, so a bad file is replaced by any other
/// file of the split.
pub struct FolderSource {
    folder: Arc<ImageFolder>,
    split: SplitInfo,
}

impl FolderSource {
    pub fn new(folder: ImageFolder) -> Self {
        let split = SplitInfo {
            dir: folder.dir.clone(),
            classes: folder.classes.clone(),
            missing_classes: folder.missing_classes.clone(),
        };
        Self { folder: Arc::new(folder), split }
    }
}

impl SampleSource for FolderSource {
    fn split(&self) -> &SplitInfo {
        &self.split
    }

    fn samples(&self) -> usize {
        self.folder.len()
    }

    fn sample_path(&self, index: usize) -> PathBuf {
        self.folder.samples[index].0.clone()
    }

    fn has_files(&self) -> bool {
        true
    }

    fn fingerprint(&self) -> Option<String> {
        self.folder.fingerprint().ok()
    }

    fn samples_per_epoch(&self, sampling: Sampling) -> usize {
        epoch_slots(self.folder.len(), 0, 0, sampling).len()
    }

    fn epoch(&self, cut: &EpochCut) -> (usize, Box<dyn EpochSamples>) {
        let slots = epoch_slots(self.folder.len(), cut.seed, cut.epoch, cut.sampling);
        let (start, batches) = cut_into_batches(&slots, cut);
        let folder = Arc::clone(&self.folder);
        (start, Box::new(FolderEpoch { folder, batches: batches.into() }))
    }
}

struct FolderEpoch {
    folder: Arc<ImageFolder>,
    batches: std::collections::VecDeque<Vec<Slot>>,
}

impl EpochSamples for FolderEpoch {
    fn next_batch(&mut self) -> Option<Box<dyn BatchSamples>> {
        let slots = self.batches.pop_front()?;
        Some(Box::new(FolderBatch { folder: Arc::clone(&self.folder), slots }))
    }

    fn remaining(&self) -> usize {
        self.batches.len()
    }
}

struct FolderBatch {
    folder: Arc<ImageFolder>,
    slots: Vec<Slot>,
}

impl BatchSamples for FolderBatch {
    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn position(&self, slot: usize) -> u64 {
        self.slots[slot].position
    }

    fn planned(&self, slot: usize) -> usize {
        self.slots[slot].index
    }

    fn candidates(&self) -> usize {
        self.folder.len()
    }

    fn read(
        &self,
        candidate: usize,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(i64, usize), BadFile> {
        let (path, label) = &self.folder.samples[candidate];
        with_file_bytes(path, decode)
            .map_err(|e| format!("read: {e}"))
            .and_then(|decoded| decoded)
            .map(|()| (*label as i64, candidate))
            .map_err(|reason| BadFile { path: path.clone(), reason })
    }
}

thread_local! {
    /// The file bytes of the sample being read on this thread, reused so that a read costs no
    /// allocation (and no fresh pages) per file.
    static FILE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
