//! The crate's error type: every variant names the path or setting a user has to fix.

use std::path::{Path, PathBuf};

/// Errors of dataset indexing, decoding, preparation and configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed. The OS error is part of the message, not a separate
    /// source, so a report that prints the whole chain says it once.
    #[error("{op} {path}: {error}")]
    Io {
        /// What we were doing ("read", "create directory", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A `pe prepare` source does not exist: `what` it should hold and what provides it.
    #[error("{path} does not exist: it should hold {what}")]
    MissingSource {
        /// The `--from` path.
        path: PathBuf,
        /// What belongs there and where it comes from.
        what: &'static str,
    },
    /// The dataset root or split folder does not exist.
    #[error("dataset folder {0} does not exist (`pe prepare imagenet` or `pe prepare fashion-mnist` makes one; or fix `data.root`)")]
    MissingRoot(PathBuf),
    /// A split folder has no class sub-folders.
    #[error("dataset folder {0} has no class sub-folders (expected <split>/<class>/<image files>)")]
    NoClasses(PathBuf),
    /// A class folder holds no image file.
    #[error("class folder {0} holds no image file (.jpeg/.jpg/.png/...); remove it or add images")]
    EmptyClass(PathBuf),
    /// A file could not be decoded as an image.
    #[error("cannot decode {path}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An input file has the wrong format (IDX files, index cache).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is out of range or unknown.
    #[error("data config: {0}")]
    Config(String),
    /// A shard stream could not be read (missing, or the network failing after its retries): the
    /// epoch stops rather than train without it.
    #[error("cannot read the data: {0}")]
    Unreadable(String),
    /// A loader worker thread ended without delivering its batch (it panicked, or its pool shut down).
    #[error("a loader worker stopped without delivering its batch")]
    WorkerStopped,
    /// Too many replacement attempts failed in a row: the dataset is (nearly) all unreadable.
    #[error("{attempts} files in a row were unreadable, last {path}: {reason}")]
    TooManyBadFiles {
        /// How many were tried.
        attempts: usize,
        /// The last one.
        path: PathBuf,
        /// Its error.
        reason: String,
    },
}

/// Why one image could not be decoded or transformed; the loader attaches the path, reports the file
/// and replaces the sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The header could not be read (unknown format, truncated file).
    #[error("image header: {0}")]
    Header(String),
    /// The pixels could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// The header announces no pixels.
    #[error("image has zero size")]
    ZeroSize,
    /// The decoder produced another size than the header announced.
    #[error("header says {}x{} but decoded {}x{}", header.0, header.1, decoded.0, decoded.1)]
    SizeMismatch {
        /// Width and height from the header.
        header: (usize, usize),
        /// Width and height decoded.
        decoded: (usize, usize),
    },
    /// Resampling failed.
    #[error("resize: {0}")]
    Resize(String),
    /// The caller's output slot does not hold one sample.
    #[error("output slot has {got} bytes, expected {expected}")]
    SlotSize {
        /// Its length.
        got: usize,
        /// One sample's length.
        expected: usize,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io { op, path: path.to_path_buf(), error: source }
    }
}

/// `.io_ctx("read", path)` on `io::Result`s: attach the operation and path.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
