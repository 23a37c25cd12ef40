//! Why a layer config cannot be built.

/// A layer config value that no layer can be built from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Drop-path probability outside [0, 1).
    #[error("drop-path probability must be in [0, 1), got {0}")]
    DropPathProb(f64),
    /// Attention heads that do not split the embedding dimension.
    #[error("attention dim {dim} must be divisible by heads {heads}")]
    HeadsDoNotDivide {
        /// Embedding dimension.
        dim: i64,
        /// Heads.
        heads: i64,
    },
    /// A stage of zero blocks.
    #[error("a stage needs at least one block")]
    EmptyStage,
    /// `first_block = standard` in a one-block stage: no block is left to share `W`.
    #[error("first_block = standard leaves no block to share W with")]
    NoBlockToShare,
}
