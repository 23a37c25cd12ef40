//! Checkpoints as immutable step folders, published atomically through `last` / `best` links.
//!
//! `checkpoints/step-000123/` is written under a temporary name, synced, then renamed; `last`
//! (and `best`) are symlinks replaced by an atomic rename. A crash at any point leaves the
//! previous `last` intact, so a run can always resume. Folders no link points at are pruned.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where training stands, plus everything not held in tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The epoch to continue in, and the next batch of it.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    pub best_acc1: f64,
    pub best_epoch: Option<u64>,
    /// Optimizer steps skipped because fp16 gradients overflowed.
    pub skipped_steps: u64,
    /// GradScaler state (absent unless fp16).
    pub scaler: Option<pe_torch::scaler::GradScalerState>,
    /// Processes that trained it: resuming inside an epoch needs the same number, since each
    /// rank's shard of the epoch depends on it.
    #[serde(default = "one_process")]
    pub world: u64,
}

fn one_process() -> u64 {
    1
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            best_acc1: 0.0,
            best_epoch: None,
            skipped_steps: 0,
            scaler: None,
            world: one_process(),
        }
    }
}

pub const MODEL: &str = "model.safetensors";
pub const EMA: &str = "ema.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "state.json";

pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    pub fn new(run_dir: &Path) -> Self {
        Self { root: run_dir.join("checkpoints") }
    }

    /// The folder `last` points to, if a run already saved one.
    pub fn last(&self) -> Option<PathBuf> {
        fs::canonicalize(self.root.join("last")).ok()
    }

    pub fn best(&self) -> Option<PathBuf> {
        fs::canonicalize(self.root.join("best")).ok()
    }

    /// Writes a checkpoint for `step` with `write(dir)` and publishes it as `last` (and `best`).
    pub fn save(&self, step: u64, best: bool, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        let name = format!("step-{step:09}");
        let final_dir = self.root.join(&name);
        let tmp_dir = self.root.join(format!(".{name}.tmp"));
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir)?;
        write(&tmp_dir)?;
        for entry in fs::read_dir(&tmp_dir)? {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        if final_dir.exists() {
            // The same step saved again (e.g. `best` after `last`): replace it whole.
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp_dir, &final_dir).with_context(|| format!("publishing {}", final_dir.display()))?;
        sync_dir(&self.root);
        self.point("last", &name)?;
        if best {
            self.point("best", &name)?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Atomically (re)points `link` at `target` (a sibling folder name).
    fn point(&self, link: &str, target: &str) -> Result<()> {
        let tmp = self.root.join(format!(".{link}.tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        fs::rename(&tmp, self.root.join(link)).with_context(|| format!("updating {link}"))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Removes step folders that neither `last` nor `best` points at, and stale temporaries.
    fn prune(&self) -> Result<()> {
        let keep: Vec<PathBuf> = [self.last(), self.best()].into_iter().flatten().collect();
        for entry in fs::read_dir(&self.root)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let is_step = name.starts_with("step-") || (name.starts_with(".step-") && name.ends_with(".tmp"));
            if is_step
                && path.is_dir()
                && !keep.iter().any(|k| *k == fs::canonicalize(&path).unwrap_or_default())
            {
                fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }
}

/// Writes `state.json` into a checkpoint folder.
pub fn write_state(dir: &Path, state: &TrainState) -> Result<()> {
    let mut file = fs::File::create(dir.join(STATE))?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Makes a rename durable; failures only weaken durability, never correctness.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}
