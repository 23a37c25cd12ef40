//! A run folder and what it guarantees: one writer at a time (its lock), one experiment (the
//! identity every checkpoint carries), checkpoints published atomically and checked against their
//! content hashes when loaded, and a start that continues from the newest checkpoint rather than
//! ever training from scratch over one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::train::checkpoint::{self, Checkpoints, Retention, TrainState};
use crate::train::run_identity::{self, Identity, RunConflict, RunLock};

/// `runs/<name>/` as one process of a run sees it (rank 0 writes, the others read).
pub struct RunFolder {
    dir: PathBuf,
    identity: Identity,
    checkpoints: Checkpoints,
    main: bool,
    /// Held until the process exits (rank 0 only).
    lock: Option<RunLock>,
}

/// The checkpoint a start continues from, read and checked.
pub struct Start {
    pub dir: PathBuf,
    pub state: TrainState,
    /// Why this checkpoint and not the one `last` names, when `last` was broken.
    pub why: Option<String>,
}

/// How a start chooses its checkpoint.
pub struct StartRequest<'a> {
    /// `--resume`: there must be a checkpoint.
    pub require: bool,
    /// `--resume-from NAME`: this one, not the newest.
    pub from: Option<&'a str>,
    /// `--allow-change` keys.
    pub allowed: &'a [String],
}

impl RunFolder {
    /// The folder `dir` of the experiment `identity`; nothing is touched until [`RunFolder::lock`].
    pub fn new(dir: PathBuf, identity: Identity, main: bool, retention: Retention) -> Self {
        let checkpoints = Checkpoints::with_retention(&dir, retention);
        Self { dir, identity, checkpoints, main, lock: None }
    }

    /// What this run is: the experiment, its data and initial weights.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rank 0 creates the folder and takes its lock, or fails naming the process that holds it.
    pub fn lock(&mut self) -> Result<()> {
        if self.main {
            std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
            self.lock = Some(RunLock::acquire(&self.dir)?);
        }
        Ok(())
    }

    /// The checkpoint this start continues from (`None`: a new run), after checking that the
    /// folder holds this experiment: the checkpoint's identity must equal this one but for the
    /// keys `--allow-change` names (recorded in `resume_changes.jsonl`). A new run drops what a
    /// start that never saved left (the folder's resolved recipe is rewritten).
    pub fn claim(&self, request: &StartRequest) -> Result<Option<Start>> {
        let start = self.start_point(request)?;
        let Some(start) = start else {
            if self.main {
                run_identity::remove_stale(&self.dir)?;
                pe_data::atomic_file::write(&self.dir.join("config.toml"), &self.identity.config)?;
            }
            return Ok(None);
        };
        match Identity::read(&start.dir)? {
            // Written before runs recorded their identity: nothing says which experiment it holds.
            None if !request.require => {
                return Err(RunConflict::NoIdentity { checkpoint: start.dir.clone() }.into());
            }
            None => {}
            Some(stored) => {
                let changes = self.identity.changes_since(&stored)?;
                run_identity::check_resume(&changes, request.allowed, &self.dir)?;
                if self.main && !changes.is_empty() {
                    run_identity::record_changes(&self.dir, start.state.step, &changes)?;
                }
            }
        }
        Ok(Some(start))
    }

    /// `--resume-from`'s checkpoint, else the newest (see [`Checkpoints::latest`]), its files
    /// checked against their content hashes before anything is written.
    fn start_point(&self, request: &StartRequest) -> Result<Option<Start>> {
        let (dir, why) = match request.from {
            Some(name) => (self.checkpoints.named(name)?, None),
            None => match self.checkpoints.latest() {
                Some(latest) => (latest.dir, latest.why),
                None if request.require => bail!("--resume: {} has no checkpoint", self.dir.display()),
                None => return Ok(None),
            },
        };
        let state = checkpoint::read_state(&dir)?;
        checkpoint::verify(&dir, None).map_err(|error| self.with_older_checkpoints(error, state.step))?;
        Ok(Some(Start { dir, state, why }))
    }

    /// Adds to a checkpoint's error the older checkpoints the run could continue from instead.
    fn with_older_checkpoints(&self, error: anyhow::Error, step: u64) -> anyhow::Error {
        let older: Vec<String> = self
            .checkpoints
            .steps()
            .iter()
            .filter(|(s, _)| *s < step)
            .map(|(s, _)| format!("step-{s}"))
            .collect();
        match older.last() {
            Some(newest) => error.context(format!(
                "Continue from an older checkpoint with --resume-from {newest} (this run has {})",
                older.join(", ")
            )),
            None => error.context("This run has no older checkpoint; start a new run with --name NEW_NAME"),
        }
    }

    /// Rank 0 makes `start` the run's `last` (see [`Checkpoints::continue_from`]) and says why it
    /// is not the one `last` named, when it is not.
    pub fn continue_from(&self, start: &Start) -> Result<()> {
        if !self.main {
            return Ok(());
        }
        if let Some(why) = &start.why {
            tracing::warn!("{why}");
        }
        self.checkpoints.continue_from(&start.dir, start.state.step)
    }

    /// Publishes a checkpoint of `state` whose tensors `write(dir)` writes, with the run's identity,
    /// as `last` (and `best`).
    pub fn save(
        &self,
        state: &TrainState,
        best: bool,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        self.checkpoints.save(state, best, |dir| {
            write(dir)?;
            self.identity.write(dir)
        })
    }
}
