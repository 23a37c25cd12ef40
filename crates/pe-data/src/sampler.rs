//! The order of one epoch for one rank: shuffling, DeiT's repeated augmentation, distributed shards.
//!
//! Without repeats this is PyTorch's `DistributedSampler`: a permutation keyed by (seed, epoch), padded
//! cyclically to a multiple of `world`, rank r taking positions r, r + world, ... With `repeats` > 1
//! it is timm's `RepeatAugSampler` (DeiT's `RASampler`): each index appears `repeats` times in a row,
//! ranks take every world-th position (so the copies land on different ranks, or, on one rank, in
//! the same batch with different augmentations), and each rank keeps only
//! `floor(len // 256 * 256 / world)` samples, so an epoch costs the same as without repeats.
//!
//! Every entry carries its position in the global (all-rank) order; augmentation randomness is keyed
//! by (seed, epoch, position), so repeated copies differ and no result depends on worker count.

use crate::rng::{Rng, Stream};

/// How an epoch is ordered and split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// Shuffle (train) or keep the index order (eval).
    pub shuffle: bool,
    /// Repeated-augmentation count (1 = off).
    pub repeats: usize,
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Pad every shard to the same length by repeating samples (DistributedSampler, for training:
    /// all ranks take the same number of steps). Off for evaluation, where each sample must be
    /// counted exactly once.
    pub pad: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { shuffle: true, repeats: 1, rank: 0, world: 1, pad: true }
    }
}

/// One slot of an epoch: the global position (keys the sample's randomness) and the dataset index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Position in the all-rank epoch order.
    pub position: u64,
    /// Index into the dataset.
    pub index: usize,
}

/// The slots rank `s.rank` visits in epoch `epoch` of a dataset of `len` samples.
pub fn epoch_slots(len: usize, seed: u64, epoch: u64, s: Sampling) -> Vec<Slot> {
    if len == 0 {
        return Vec::new();
    }
    let world = s.world.max(1);
    let repeats = s.repeats.max(1);
    let order: Vec<usize> = if s.shuffle {
        Rng::keyed(Stream::Shuffle, &[seed, epoch]).permutation(len)
    } else {
        (0..len).collect()
    };
    let n = len * repeats; // length of the repeated list [i, i, i, j, j, j, ...]
    let per_rank = n.div_ceil(world);
    let total = per_rank * world;
    let keep = if repeats > 1 {
        let selected = if len >= 256 { len / 256 * 256 / world } else { len.div_ceil(world) };
        selected.min(per_rank)
    } else {
        per_rank
    };
    let end = if s.pad { total } else { n };
    (s.rank..end)
        .step_by(world)
        .take(keep)
        .map(|p| Slot { position: p as u64, index: order[(p % n) / repeats] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_rank_is_a_permutation_that_changes_per_epoch() {
        let s = Sampling::default();
        let a: Vec<usize> = epoch_slots(100, 1, 0, s).iter().map(|x| x.index).collect();
        let b: Vec<usize> = epoch_slots(100, 1, 1, s).iter().map(|x| x.index).collect();
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_slots(100, 1, 0, s).iter().map(|x| x.index).collect::<Vec<_>>());
        let eval = Sampling { shuffle: false, ..s };
        assert_eq!(
            epoch_slots(5, 1, 3, eval).iter().map(|x| x.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn unpadded_shards_count_every_sample_exactly_once() {
        let mut all: Vec<usize> = (0..2)
            .flat_map(|rank| {
                let s = Sampling { shuffle: false, rank, world: 2, pad: false, ..Default::default() };
                epoch_slots(7, 0, 0, s).into_iter().map(|slot| slot.index)
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn shards_partition_and_pad_like_distributed_sampler() {
        let world = 4;
        let mut all = Vec::new();
        for rank in 0..world {
            let slots = epoch_slots(10, 3, 0, Sampling { rank, world, ..Default::default() });
            assert_eq!(slots.len(), 3); // ceil(10 / 4)
            all.extend(slots);
        }
        all.sort_by_key(|s| s.position);
        assert_eq!(all.iter().map(|s| s.position).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
        let mut idx: Vec<usize> = all.iter().map(|s| s.index).collect();
        // Padding repeats the first two of the permutation.
        assert_eq!(idx[10], idx[0]);
        assert_eq!(idx[11], idx[1]);
        idx.truncate(10);
        idx.sort_unstable();
        assert_eq!(idx, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn repeated_augmentation_matches_deit() {
        // One rank: each index three times in a row, epoch length floor(len // 256 * 256).
        let s = Sampling { repeats: 3, ..Default::default() };
        let slots = epoch_slots(1000, 0, 0, s);
        assert_eq!(slots.len(), 768);
        for chunk in slots.chunks(3) {
            assert!(chunk.iter().all(|x| x.index == chunk[0].index));
        }
        // Positions differ, so the three copies get different augmentations.
        assert_ne!(slots[0].position, slots[1].position);
        // Two ranks: the copies of one index go to both ranks; each rank keeps 1000 // 256 * 256 / 2.
        let r0 = epoch_slots(1000, 0, 0, Sampling { rank: 0, world: 2, ..s });
        let r1 = epoch_slots(1000, 0, 0, Sampling { rank: 1, world: 2, ..s });
        assert_eq!((r0.len(), r1.len()), (384, 384));
        assert_eq!(r0[0].index, r1[0].index); // positions 0 and 1 are copies of the same image
        assert_eq!(r0[1].index, r1[0].index); // position 2 too
                                              // Tiny data sets (< 256) keep ceil(len / world).
        assert_eq!(epoch_slots(10, 0, 0, s).len(), 10);
    }
}
