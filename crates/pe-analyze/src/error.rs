//! What can go wrong while analysing weights.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("matrix {name} has no entries ({rows}×{cols})")]
    Empty { name: String, rows: i64, cols: i64 },
    #[error("hidden activation {name} has {got} channels, but its pair's matrix has {expected} rows")]
    HiddenShape { name: String, expected: i64, got: i64 },
    #[error("drawing {path}: {message}")]
    Figure { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, AnalyzeError>;
