//! The consumer side of a shard epoch: a reader thread streams the planned samples and the loader
//! takes them out batch by batch, in plan order, holding only those read but not yet batched (at most
//! about the shuffle buffer plus the channel).

use super::plan::Planned;
use super::read::{Delivery, Failure, RawSample, ShardSet};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

/// One sample of a batch, as the decode workers get it.
pub(crate) struct Item {
    /// Stream position (keys augmentation and replacement).
    pub position: u64,
    /// `<shard>#<member>`, for reports.
    pub name: PathBuf,
    /// The encoded sample, or why it could not be read.
    pub sample: Result<Arc<RawSample>, Failure>,
}

type Key = (usize, usize);

/// The batches of one epoch still to hand out, and the samples read ahead for them.
pub(crate) struct Feed {
    set: Arc<ShardSet>,
    batches: VecDeque<Vec<Planned>>,
    rx: mpsc::Receiver<Delivery>,
    held: HashMap<Key, Result<Arc<RawSample>, Failure>>,
    /// Uses left per sample (repeated augmentation uses one sample several times).
    uses: HashMap<Key, usize>,
}

impl Feed {
    /// Start the reader thread on the samples of `batches`.
    pub fn start(set: Arc<ShardSet>, batches: Vec<Vec<Planned>>, channel: usize) -> Self {
        let plan: Vec<Planned> = batches.iter().flatten().copied().collect();
        let mut uses = HashMap::with_capacity(plan.len());
        for p in &plan {
            *uses.entry((p.shard, p.member)).or_insert(0) += 1;
        }
        let (tx, rx) = mpsc::sync_channel(channel.max(1));
        let reader_set = Arc::clone(&set);
        // Dropping the feed drops `rx`; the reader's next send fails and it returns.
        let spawned =
            std::thread::Builder::new().name("pe-shards".into()).spawn(move || reader_set.stream(&plan, &tx));
        if let Err(e) = spawned {
            // No reader: every sample reports why (the batches then fail as unreadable).
            let failure = Failure { reason: format!("cannot start the shard reader: {e}"), fatal: true };
            let held = uses.keys().map(|&k| (k, Err(failure.clone()))).collect();
            return Feed { set, batches: batches.into(), rx, held, uses };
        }
        Feed { set, batches: batches.into(), rx, held: HashMap::new(), uses }
    }

    /// Batches not yet handed out.
    pub fn remaining(&self) -> usize {
        self.batches.len()
    }

    /// The next batch's samples, waiting for the reader as needed.
    pub fn next_batch(&mut self) -> Option<Vec<Item>> {
        let planned = self.batches.pop_front()?;
        Some(planned.iter().map(|p| self.take(p)).collect())
    }

    fn take(&mut self, p: &Planned) -> Item {
        let key = (p.shard, p.member);
        while !self.held.contains_key(&key) {
            match self.rx.recv() {
                Ok((k, r)) => {
                    self.held.insert(k, r.map(Arc::new));
                }
                Err(_) => {
                    let failure = Failure { reason: "the shard reader stopped".into(), fatal: true };
                    self.held.insert(key, Err(failure));
                }
            }
        }
        let left = self.uses.get_mut(&key).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        let lost = || Err(Failure { reason: "sample lost".into(), fatal: true });
        let sample = if left == Some(0) {
            self.uses.remove(&key);
            self.held.remove(&key).unwrap_or_else(lost)
        } else {
            self.held.get(&key).cloned().unwrap_or_else(lost)
        };
        Item { position: p.position, name: self.set.member_name(p.shard, p.member), sample }
    }
}
