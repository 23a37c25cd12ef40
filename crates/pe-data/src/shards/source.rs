//! A [`ShardSet`] as a loader's [`SampleSource`]: one reader thread per epoch streams the planned
//! samples in shard order ([`Feed`]); a bad sample is replaced by another of its own batch, since a
//! stream has no random access.

use std::sync::Arc;

use super::feed::{Feed, Item};
use super::plan::epoch_plan;
use super::read::ShardSet;
use crate::loader::BadFile;
use crate::sampler::Sampling;
use crate::source::{cut_into_batches, BatchSamples, EpochCut, EpochSamples, SampleSource, SplitInfo};

pub struct ShardSource {
    set: Arc<ShardSet>,
    split: SplitInfo,
    fingerprint: Option<String>,
}

impl ShardSource {
    pub fn new(set: ShardSet) -> Self {
        let split = SplitInfo {
            dir: set.dir.clone(),
            classes: set.classes.clone(),
            missing_classes: set.missing_classes.clone(),
        };
        let fingerprint = set.fingerprint.clone();
        Self { set: Arc::new(set), split, fingerprint }
    }
}

impl SampleSource for ShardSource {
    fn split(&self) -> &SplitInfo {
        &self.split
    }

    fn samples(&self) -> usize {
        self.set.len()
    }

    fn sample_path(&self, index: usize) -> std::path::PathBuf {
        self.set.member_path(index)
    }

    fn has_files(&self) -> bool {
        false
    }

    fn fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    fn samples_per_epoch(&self, sampling: Sampling) -> usize {
        epoch_plan(&self.set.counts(), 0, 0, sampling, 0).len()
    }

    fn epoch(&self, cut: &EpochCut) -> (usize, Box<dyn EpochSamples>) {
        let plan = epoch_plan(&self.set.counts(), cut.seed, cut.epoch, cut.sampling, cut.shuffle_buffer);
        let (start, batches) = cut_into_batches(&plan, cut);
        let channel = (2 * cut.batch_size).max(64);
        (start, Box::new(Feed::start(Arc::clone(&self.set), batches, channel)))
    }
}

impl EpochSamples for Feed {
    fn next_batch(&mut self) -> Option<Box<dyn BatchSamples>> {
        Some(Box::new(ShardBatch(Feed::next_batch(self)?)))
    }

    fn remaining(&self) -> usize {
        Feed::remaining(self)
    }
}

struct ShardBatch(Vec<Item>);

impl BatchSamples for ShardBatch {
    fn slots(&self) -> usize {
        self.0.len()
    }

    fn position(&self, slot: usize) -> u64 {
        self.0[slot].position
    }

    fn planned(&self, slot: usize) -> usize {
        slot
    }

    fn candidates(&self) -> usize {
        self.0.len()
    }

    fn fatal(&self) -> Option<String> {
        self.0
            .iter()
            .find_map(|item| item.sample.as_ref().err().filter(|f| f.fatal).map(|f| f.reason.clone()))
    }

    fn read(
        &self,
        candidate: usize,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(i64, usize), BadFile> {
        let item = &self.0[candidate];
        item.sample
            .as_ref()
            .map_err(|f| f.reason.clone())
            .and_then(|s| decode(&s.bytes).map(|()| (s.label as i64, s.index)))
            .map_err(|reason| BadFile { path: item.name.clone(), reason })
    }
}
