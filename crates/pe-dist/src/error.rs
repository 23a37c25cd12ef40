//! The crate's error type: bad torchrun environment, c10d failures with what was being done, and
//! launcher failures.
/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("environment variable {var} is not set (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")]
    MissingEnv { var: &'static str },
    #[error("environment variable {var}={value:?} is not {expected}")]
    BadEnv { var: &'static str, value: String, expected: String },
    /// A c10d call failed; `what` says which step (with address, rank and timeout where relevant).
    #[error("{what}: {message}")]
    C10d { what: String, message: String },
    #[error("ranks disagree on {what}: values range from {min:#x} to {max:#x}")]
    Mismatch { what: String, min: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    #[error("launch: --nproc must be at least 1")]
    NoRanks,
    #[error("launch: starting rank {rank}: {}: {error}", program.display())]
    StartRank { rank: usize, program: std::path::PathBuf, error: std::io::Error },
    #[error("launch: waiting for rank {rank}: {error}")]
    WaitRank { rank: usize, error: std::io::Error },
    #[error("launch: installing the signal handlers: {0}")]
    Signals(String),
    #[error("rank {rank} (pid {pid}) failed: {status}; the other ranks were terminated")]
    RankFailed { rank: usize, pid: u32, status: std::process::ExitStatus },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Adds what was being done to a raw c10d message from the shim.
    pub(crate) fn c10d(what: impl Into<String>, message: String) -> Self {
        Error::C10d { what: what.into(), message }
    }
}
