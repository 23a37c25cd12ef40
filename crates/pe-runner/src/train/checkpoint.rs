//! Checkpoints as immutable step folders, published atomically through `last` / `best` links.
//!
//! `checkpoints/step-000123/` is written under a temporary name, synced, then renamed; `last`
//! (and `best`) are symlinks replaced by an atomic rename. A crash at any point leaves the
//! previous `last` intact, so a run can always resume. Folders no link points at are pruned,
//! except those the run's [`Retention`] keeps (for checkpoint averaging and later analysis).
//! `state.json`, written last, records a content hash of every other file, checked on load.

use std::collections::BTreeMap;
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
    /// The epoch (1-based, as logs print it) after which the best top-1 was measured.
    pub best_after_epoch: Option<u64>,
    /// Optimizer steps skipped because fp16 gradients overflowed.
    pub skipped_steps: u64,
    /// GradScaler state (absent unless fp16).
    pub scaler: Option<pe_torch::scaler::GradScalerState>,
    /// Processes that trained it: resuming inside an epoch needs the same number, since each
    /// rank's shard of the epoch depends on it.
    #[serde(default = "one_process")]
    pub world: u64,
    /// Where the logs ended at this checkpoint (absent in checkpoints from before it was kept).
    #[serde(default)]
    pub logs: Option<LogMark>,
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
            best_after_epoch: None,
            skipped_steps: 0,
            scaler: None,
            world: one_process(),
            logs: None,
        }
    }
}

pub const MODEL: &str = "model.safetensors";
pub const EMA: &str = "ema.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "state.json";

/// Where the run's logs ended when a checkpoint was published (they are flushed first), so a
/// resume from it can drop whatever a later, lost stretch of training appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMark {
    /// Length of `metrics.jsonl`.
    pub metrics_bytes: u64,
    /// The TensorBoard event file being written, and its length.
    pub events_file: String,
    pub events_bytes: u64,
}

/// `state.json` as stored: the training state and a content hash of every other file of the
/// folder, checked when the checkpoint is loaded.
#[derive(Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: TrainState,
    /// File name -> `blake3:<hex>` (absent in checkpoints from before hashes were stored).
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// What checkpoints stored before `best_after_epoch`: the same epoch, 0-based.
    #[serde(default, rename = "best_epoch", skip_serializing)]
    legacy_best_epoch: Option<u64>,
}

/// A checkpoint file whose bytes are not those it was saved with.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: the file does not match the content hash recorded when the checkpoint was saved (it was \
     changed or damaged since); nothing was loaded from it",
    path.display()
)]
pub struct Corrupt {
    pub path: PathBuf,
}

/// The checkpoint a run continues from.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub dir: PathBuf,
    /// Why this folder and not the one `last` names, when `last` could not be followed.
    pub why: Option<String>,
}

/// Which step folders pruning keeps besides those `last` and `best` name
/// (`train.keep_checkpoints`, `train.keep_every_epochs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest step folders kept, `last`'s included.
    pub newest: usize,
    /// Also keep for good the checkpoint written at the end of every this many epochs; 0 = none.
    pub every_epochs: u64,
}

impl Default for Retention {
    /// Only what `last` and `best` name.
    fn default() -> Self {
        Self { newest: 1, every_epochs: 0 }
    }
}

impl Retention {
    /// Whether a checkpoint at `state` is one kept for good.
    fn keeps_for_good(&self, state: &TrainState) -> bool {
        self.every_epochs > 0
            && state.batch_in_epoch == 0
            && state.epoch > 0
            && state.epoch.is_multiple_of(self.every_epochs)
    }
}

pub struct Checkpoints {
    root: PathBuf,
    retention: Retention,
}

impl Checkpoints {
    /// The checkpoints of `run_dir`, for reading (a save prunes to the default [`Retention`]).
    pub fn new(run_dir: &Path) -> Self {
        Self::with_retention(run_dir, Retention::default())
    }

    /// The checkpoints of a run that saves into them, pruned to `retention`.
    pub fn with_retention(run_dir: &Path, retention: Retention) -> Self {
        Self { root: run_dir.join("checkpoints"), retention }
    }

    /// The folder `last` points to, if it points to one.
    pub fn last(&self) -> Option<PathBuf> {
        self.follow("last")
    }

    pub fn best(&self) -> Option<PathBuf> {
        self.follow("best")
    }

    /// `best`, `last` or `step-N` (also `N`): the checkpoint folder of that name, or an error naming
    /// the checkpoints the run has.
    pub fn named(&self, name: &str) -> Result<PathBuf> {
        let found = match name {
            "best" => self.best(),
            "last" => self.last(),
            step => {
                let n: u64 = step
                    .strip_prefix("step-")
                    .unwrap_or(step)
                    .parse()
                    .with_context(|| format!("checkpoint {step:?}: expected best, last or step-N"))?;
                Some(self.root.join(step_name(n))).filter(|dir| dir.is_dir())
            }
        };
        found.with_context(|| {
            format!("{} has no checkpoint {name:?}; it has: {}", self.root.display(), self.listing())
        })
    }

    /// The checkpoint a rerun continues from: the one `last` points to or, when `last` is missing,
    /// dangling or a directory (a copy made by a tool that followed the links), the newest step
    /// folder (a published step folder is complete: it is renamed into place only once written).
    /// `None` only when the run has no checkpoint at all.
    pub fn latest(&self) -> Option<Latest> {
        if let (Some(dir), false) = (self.last(), self.is_copy("last")) {
            return Some(Latest { dir, why: None });
        }
        let link = self.root.join("last");
        let problem = if self.is_copy("last") {
            "is a directory, not a link (copied by a tool that followed links)"
        } else if fs::symlink_metadata(&link).is_ok() {
            "points to a folder that does not exist"
        } else {
            "is missing"
        };
        // A copied `last` counts as a checkpoint too; of equal steps the step folder wins (the
        // last maximum is taken).
        let copy = self.last().and_then(|dir| Some((read_state(&dir).ok()?.step, dir)));
        let (step, dir) = copy.into_iter().chain(self.steps()).max_by_key(|(step, _)| *step)?;
        let why = format!("{} {problem}; continuing from the newest checkpoint, step {step}", link.display());
        Some(Latest { dir, why: Some(why) })
    }

    /// The step folders, oldest first.
    pub fn steps(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut steps: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let step = entry.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
                entry.path().is_dir().then(|| (step, entry.path()))
            })
            .collect();
        steps.sort();
        steps
    }

    /// The step folders as `step-N, step-M`, for messages.
    fn listing(&self) -> String {
        let steps: Vec<String> = self.steps().iter().map(|(step, _)| format!("step-{step}")).collect();
        if steps.is_empty() {
            "none".into()
        } else {
            steps.join(", ")
        }
    }

    /// Writes a checkpoint for `step` with `write(dir)` (every file but `state.json`), then
    /// `state.json` with `state` and the other files' hashes, and publishes it as `last` (and `best`).
    pub fn save(
        &self,
        state: &TrainState,
        best: bool,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        let name = step_name(state.step);
        let final_dir = self.root.join(&name);
        publish(&final_dir, state, write)?;
        self.point("last", &name)?;
        if best {
            self.point("best", &name)?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Makes the checkpoint `dir` (at `step`) the one the run continues from: `last` points to it
    /// (it may have named a later checkpoint, with `--resume-from`, or been broken), and a `best`
    /// beyond it goes, since that stretch of training is being redone. Later step folders are
    /// pruned at the next save. A copied `last` (no step folder) is left for the next save to replace.
    pub fn continue_from(&self, dir: &Path, step: u64) -> Result<()> {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).filter(|n| n.starts_with("step-")) else {
            return Ok(());
        };
        if self.last() != fs::canonicalize(dir).ok() || self.is_copy("last") {
            self.point("last", name)?;
        }
        let best_step = self.best().and_then(|best| read_state(&best).ok()).map(|state| state.step);
        if best_step.is_some_and(|best| best > step) {
            let link = self.root.join("best");
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        Ok(())
    }

    /// The link `name` resolved, if it resolves to a folder.
    fn follow(&self, name: &str) -> Option<PathBuf> {
        fs::canonicalize(self.root.join(name)).ok().filter(|dir| dir.is_dir())
    }

    /// Whether `name` is a real directory where a link belongs.
    fn is_copy(&self, name: &str) -> bool {
        fs::symlink_metadata(self.root.join(name)).is_ok_and(|meta| meta.is_dir())
    }

    /// Atomically (re)points `link` at `target` (a sibling folder name).
    fn point(&self, link: &str, target: &str) -> Result<()> {
        let path = self.root.join(link);
        if self.is_copy(link) {
            // A copy of a step folder where the link belongs: the step folders hold what it holds,
            // and a rename cannot replace a directory by a link.
            fs::remove_dir_all(&path)
                .with_context(|| format!("replacing the directory {}", path.display()))?;
        }
        let tmp = self.root.join(format!(".{link}.tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("updating {}", path.display()))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Removes stale temporaries and the step folders nothing keeps: kept are those `last` and
    /// `best` name, the [`Retention::newest`] step folders up to `last`, and the ones kept for good.
    /// A folder beyond `last` belongs to training that a resume from an earlier checkpoint redoes,
    /// so it goes whatever it is.
    fn prune(&self) -> Result<()> {
        let linked: Vec<PathBuf> = [self.last(), self.best()].into_iter().flatten().collect();
        let last_step = self.last().and_then(|dir| read_state(&dir).ok()).map(|state| state.step);
        let current: Vec<(u64, PathBuf)> =
            self.steps().into_iter().filter(|(step, _)| last_step.is_none_or(|last| *step <= last)).collect();
        let newest = current.len().saturating_sub(self.retention.newest);
        let mut keep: Vec<PathBuf> = current[newest..].iter().map(|(_, dir)| dir.clone()).collect();
        keep.extend(
            current[..newest]
                .iter()
                .filter(|(_, dir)| read_state(dir).is_ok_and(|state| self.retention.keeps_for_good(&state)))
                .map(|(_, dir)| dir.clone()),
        );
        let keep: Vec<PathBuf> =
            keep.iter().filter_map(|dir| fs::canonicalize(dir).ok()).chain(linked).collect();
        for entry in fs::read_dir(&self.root)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let is_step = name.starts_with("step-") || (name.starts_with(".step-") && name.ends_with(".tmp"));
            if is_step
                && path.is_dir()
                && !keep.iter().any(|k| *k == fs::canonicalize(&path).unwrap_or_default())
            {
                fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Writes the checkpoint folder `dir` whole or not at all: `write(tmp)` writes every file but
/// `state.json` into a temporary sibling, `state.json` records `state` and their hashes, and
/// the synced folder is renamed into place (replacing an older one of the same name).
pub fn publish(dir: &Path, state: &TrainState, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().context("a checkpoint folder has a parent")?;
    let name = dir.file_name().context("a checkpoint folder has a name")?.to_string_lossy();
    let tmp_dir = parent.join(format!(".{name}.tmp"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).with_context(|| format!("removing {}", tmp_dir.display()))?;
    }
    fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    write(&tmp_dir)?;
    write_state_file(&tmp_dir, state)?;
    for entry in fs::read_dir(&tmp_dir)? {
        let path = entry?.path();
        fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    if dir.exists() {
        // The same step saved again (e.g. `best` after `last`): replace it whole.
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&tmp_dir, dir).with_context(|| format!("publishing {}", dir.display()))?;
    sync_dir(parent);
    Ok(())
}

fn step_name(step: u64) -> String {
    format!("step-{step:09}")
}

fn write_state_file(dir: &Path, state: &TrainState) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name != STATE {
            files.insert(name, content_hash(&path)?);
        }
    }
    let text =
        serde_json::to_string_pretty(&StateFile { state: state.clone(), files, legacy_best_epoch: None })?;
    let path = dir.join(STATE);
    let mut file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// `blake3:<hex>` of a file's bytes (~1–3 GB/s per core: cheap beside reading the file).
pub(crate) fn content_hash(path: &Path) -> Result<String> {
    let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

fn read_state_file(dir: &Path) -> Result<StateFile> {
    let path = dir.join(STATE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let file = read_state_file(dir)?;
    let mut state = file.state;
    if state.best_after_epoch.is_none() {
        state.best_after_epoch = file.legacy_best_epoch.map(|epoch| epoch + 1);
    }
    Ok(state)
}

/// Checks `files` of the checkpoint `dir` (or all of them, with `None`) against the hashes its
/// `state.json` recorded; the first mismatch is a [`Corrupt`] error. Files of a checkpoint from
/// before hashes were stored cannot be checked and pass.
pub fn verify(dir: &Path, files: Option<&[&str]>) -> Result<()> {
    let recorded = read_state_file(dir)?.files;
    for (name, hash) in &recorded {
        if files.is_some_and(|wanted| !wanted.contains(&name.as_str())) {
            continue;
        }
        let path = dir.join(name);
        if content_hash(&path)? != *hash {
            return Err(Corrupt { path }.into());
        }
    }
    Ok(())
}

/// Makes a rename durable; failures only weaken durability, never correctness.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_state_json_with_a_0_based_best_epoch_reads_as_1_based() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"step": 12, "epoch": 2, "batch_in_epoch": 0, "best_acc1": 50.0, "best_epoch": 1,
            "skipped_steps": 0, "scaler": null, "world": 1}"#;
        std::fs::write(dir.path().join(STATE), old).unwrap();
        assert_eq!(read_state(dir.path()).unwrap().best_after_epoch, Some(2));
        let state = TrainState { best_after_epoch: Some(2), ..TrainState::default() };
        write_state_file(dir.path(), &state).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE)).unwrap();
        assert!(text.contains("\"best_after_epoch\": 2") && !text.contains("\"best_epoch\""), "{text}");
        assert_eq!(read_state(dir.path()).unwrap(), state);
    }

    /// Saves checkpoints at steps 10, 20, ..., 100; epochs end at every 20 steps, and step 30 is
    /// the best. Returns the steps whose folders remain.
    fn saved(checkpoints: &Checkpoints, steps: impl IntoIterator<Item = u64>) -> Vec<u64> {
        for step in steps {
            let state =
                TrainState { step, epoch: step / 20, batch_in_epoch: step % 20, ..TrainState::default() };
            checkpoints.save(&state, step == 30, |dir| Ok(fs::write(dir.join(MODEL), b"w")?)).unwrap();
        }
        checkpoints.steps().into_iter().map(|(step, _)| step).collect()
    }

    #[test]
    fn by_default_only_what_last_and_best_name_is_kept() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path());
        assert_eq!(saved(&checkpoints, (1..=10).map(|i| i * 10)), [30, 100]);
    }

    #[test]
    fn retention_keeps_the_newest_and_every_kth_epoch_end() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::with_retention(run.path(), Retention { newest: 3, every_epochs: 2 });
        // Epoch ends at steps 20, 40, 60, 80 (epochs 1-4): 40 and 80 are kept for good.
        assert_eq!(saved(&checkpoints, (1..=10).map(|i| i * 10)), [30, 40, 80, 90, 100]);
        // Resumed from step 40 and saved at 50: what lay beyond it is training being redone.
        checkpoints.continue_from(&run.path().join("checkpoints").join(step_name(40)), 40).unwrap();
        assert_eq!(saved(&checkpoints, [50]), [30, 40, 50]);
        assert_eq!(
            checkpoints.best(),
            fs::canonicalize(run.path().join("checkpoints").join(step_name(30))).ok()
        );
    }
}
