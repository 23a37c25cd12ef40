//! WebDataset-style tar shards: a writer that packs an ImageFolder into shuffled `NNNNNN.tar` files
//! (`<key>.jpg` + `<key>.cls` per sample) with a small JSON index, and the streaming source the loader
//! reads them through.
//!
//! Why shards: on network or object storage, opening 1.28M small files per epoch costs more than
//! reading them; a few hundred large files read front to back stream at the storage's bandwidth.
//! The index records each shard's sample count, so an epoch's whole order (shard permutation, rank
//! split, shuffle buffer) is computed up front from metadata alone ([`plan`]): it depends on
//! (seed, epoch, rank, world) only, never on worker count or timing, and a resumed run skips exactly
//! the samples it already trained on.

pub(crate) mod feed;
pub mod index;
pub mod plan;
pub mod read;
pub mod source;
pub mod write;

pub use index::{ShardIndex, ShardInfo, SplitShards, WrittenWith, INDEX_FILE};
pub use plan::{epoch_plan, Planned};
pub use read::{RawSample, ShardSet};
pub use write::{write_shards, ShardWriteOptions, ShardWriteSummary};
