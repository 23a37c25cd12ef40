//! The order of one epoch of a shard set for one rank, computed from the index's sample counts alone.
//!
//! 1. Shards are permuted per (seed, epoch) (training) or kept in file order (evaluation); their samples
//!    concatenated form the epoch's stream, each sample `repeats` times in a row (DeiT's repeated
//!    augmentation).
//! 2. Rank r takes the contiguous range `[r * len / world, (r + 1) * len / world)` of the stream, so
//!    ranks read disjoint samples and, with many more shards than ranks, mostly whole shards (a shard
//!    at a boundary is split between two ranks by member). Training ranks take `floor(len / world)`
//!    each (the few left over change with the shard order); with repeats each keeps as many as timm's
//!    `RepeatAugSampler`. Evaluation covers every sample exactly once.
//! 3. Training passes the rank's samples through a shuffle buffer of `buffer` samples (webdataset's
//!    `shuffle(n)`), keyed by (seed, epoch, rank): sample t of the output is among the first t + buffer
//!    of the stream, which bounds what the reader must hold.
//!
//! Each planned sample keeps its stream position, which keys its augmentation as in the folder loader.

use crate::rng::{Rng, Stream};
use crate::sampler::Sampling;

/// One sample of a rank's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Planned {
    /// Shard number (index into the split's shard list).
    pub shard: usize,
    /// Sample number inside the shard.
    pub member: usize,
    /// Position in the all-rank epoch stream (keys the sample's randomness).
    pub position: u64,
}

/// Key-length tag separating the buffer's generator from the shard permutation's (same stream).
const BUFFER_TAG: u64 = 0xB0FF;

/// The samples rank `s.rank` reads in `epoch`, in output order; `counts[i]` is shard i's sample count.
pub fn epoch_plan(counts: &[usize], seed: u64, epoch: u64, s: Sampling, buffer: usize) -> Vec<Planned> {
    let world = s.world.max(1) as u64;
    let repeats = s.repeats.max(1) as u64;
    let len: u64 = counts.iter().map(|&c| c as u64).sum();
    if len == 0 {
        return Vec::new();
    }
    let order: Vec<usize> = if s.shuffle {
        Rng::keyed(Stream::Shuffle, &[seed, epoch]).permutation(counts.len())
    } else {
        (0..counts.len()).collect()
    };
    let n = len * repeats;
    let rank = s.rank as u64;
    let (start, mut end) = if s.pad {
        let per = n / world;
        (rank * per, rank * per + per)
    } else {
        (rank * n / world, (rank + 1) * n / world)
    };
    if s.pad && repeats > 1 {
        let keep = if len >= 256 { len / 256 * 256 / world } else { len.div_ceil(world) };
        end = end.min(start + keep);
    }
    // Walk the shards in epoch order up to the rank's range.
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut shard_start = 0u64; // stream position of the shard's first copy
    for &shard in &order {
        let span = counts[shard] as u64 * repeats;
        let (lo, hi) = (start.max(shard_start), end.min(shard_start + span));
        for p in lo..hi {
            out.push(Planned { shard, member: ((p - shard_start) / repeats) as usize, position: p });
        }
        shard_start += span;
        if shard_start >= end {
            break;
        }
    }
    if s.shuffle && buffer > 1 {
        let mut rng = Rng::keyed(Stream::Shuffle, &[seed, epoch, rank, BUFFER_TAG]);
        out = shuffle_buffer(out, buffer, &mut rng);
    }
    out
}

/// webdataset's shuffle buffer: fill to `size`, then each incoming item displaces a random one, which
/// is emitted; at the end the rest leave in random order.
fn shuffle_buffer<T: Copy>(items: Vec<T>, size: usize, rng: &mut Rng) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    let mut buf: Vec<T> = Vec::with_capacity(size);
    for item in items {
        if buf.len() < size {
            buf.push(item);
            continue;
        }
        let j = rng.below(size as u64) as usize;
        out.push(std::mem::replace(&mut buf[j], item));
    }
    while !buf.is_empty() {
        let j = rng.below(buf.len() as u64) as usize;
        out.push(buf.swap_remove(j));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(rank: usize, world: usize) -> Sampling {
        Sampling { rank, world, ..Default::default() }
    }

    #[test]
    fn eval_covers_every_sample_once_in_file_order() {
        let counts = [3, 5, 2];
        let mut all = Vec::new();
        for rank in 0..3 {
            let s = Sampling { shuffle: false, rank, world: 3, pad: false, repeats: 1 };
            all.extend(epoch_plan(&counts, 7, 0, s, 100));
        }
        let got: Vec<(usize, usize)> = all.iter().map(|p| (p.shard, p.member)).collect();
        let want: Vec<(usize, usize)> =
            counts.iter().enumerate().flat_map(|(s, &c)| (0..c).map(move |m| (s, m))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn training_ranks_are_disjoint_equal_and_change_per_epoch() {
        let counts = [4, 4, 4, 4, 3];
        let plans: Vec<Vec<Planned>> = (0..2).map(|r| epoch_plan(&counts, 1, 0, train(r, 2), 3)).collect();
        assert_eq!((plans[0].len(), plans[1].len()), (9, 9)); // floor(19 / 2)
        let mut seen: Vec<(usize, usize)> = plans.iter().flatten().map(|p| (p.shard, p.member)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 18);
        let mut pos: Vec<u64> = plans.iter().flatten().map(|p| p.position).collect();
        pos.sort_unstable();
        assert_eq!(pos, (0..18).collect::<Vec<_>>());
        assert_ne!(epoch_plan(&counts, 1, 1, train(0, 2), 3), plans[0]);
        assert_eq!(epoch_plan(&counts, 1, 0, train(0, 2), 3), plans[0]);
    }

    #[test]
    fn buffer_bounds_the_look_ahead() {
        let counts = [50, 50];
        let plain = epoch_plan(&counts, 3, 0, train(0, 1), 1);
        let shuffled = epoch_plan(&counts, 3, 0, train(0, 1), 8);
        assert_ne!(plain, shuffled);
        let stream_index = |p: &Planned| plain.iter().position(|q| q == p).unwrap();
        for (t, p) in shuffled.iter().enumerate() {
            assert!(stream_index(p) < t + 8, "sample {t} reads ahead too far");
        }
    }

    #[test]
    fn repeats_give_consecutive_copies_with_distinct_positions() {
        let s = Sampling { repeats: 3, ..train(0, 1) };
        let plan = epoch_plan(&[4, 4], 0, 0, s, 0);
        assert_eq!(plan.len(), 8); // < 256 samples: ceil(len / world)
        assert!(plan[..3].iter().all(|p| (p.shard, p.member) == (plan[0].shard, plan[0].member)));
        assert_ne!(plan[0].position, plan[1].position);
    }
}
