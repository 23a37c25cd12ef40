//! Run identity: the experiment (resolved recipe) and data set a run folder's checkpoints belong to,
//! so that a different experiment never silently continues them, and the lock that keeps one
//! writer per run folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::load::{from_toml, to_toml};
use crate::config::ExperimentConfig;
use crate::train::init_weights::InitIdentity;

/// Stored in every checkpoint as `identity.json`.
pub const FILE: &str = "identity.json";

/// Keys a run may change when it resumes (`--resume --allow-change KEY`): how long it runs, how
/// often it evaluates, logs and saves, where it computes, and the format its data is read in
/// (the data itself, `dataset.*`, must stay the same). Anything else makes another experiment.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.epochs",
    "train.max_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.keep_every_epochs",
    "train.device",
    "train.threads",
    "train.dist_backend",
    "train.dist_timeout_s",
    "data.workers",
    "data.prefetch",
    "data.format",
    "eval.every_epochs",
    "eval.batch_size",
    "eval.per_class",
    "logging.every_steps",
    "logging.sample_images",
    "logging.analyze_every_epochs",
];

/// Where a run is, what it is called and whether a progress bar is drawn do not change what it
/// computes: never part of its identity.
/// Where the data lives is not what it is (that is `dataset.*`: classes, counts, fingerprints).
/// Nor is where the initial weights or the teacher were read (`init.file`, `distill.teacher`,
/// `teacher.file`): their content is (`init.digest`, `teacher.digest`).
const NOT_IDENTITY: &[&str] = &[
    "name",
    "logging.runs_dir",
    "logging.progress",
    "data.root",
    "dataset.root",
    "init.file",
    "distill.teacher",
    "teacher.file",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The resolved recipe as TOML.
    pub config: String,
    pub dataset: DatasetIdentity,
    /// The weights `model.init` started the run from (absent without it, and in older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitIdentity>,
    /// The weights of the `[distill]` teacher (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<InitIdentity>,
}

/// What a run's data is: its class list, sample counts and content fingerprints (see
/// [`pe_data::ImageFolder::fingerprint`]), which a move or a folder-to-shards conversion keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetIdentity {
    /// Where it was (recorded, not compared).
    pub root: String,
    pub classes: Vec<String>,
    pub train_samples: usize,
    pub val_samples: usize,
    /// Absent in runs from before fingerprints, and for shard sets that did not record one:
    /// then only the classes and counts are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fingerprint: Option<String>,
}

/// A key whose value differs between the stored run and this command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// Why this command may not train this run folder (exit code 2; nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum RunConflict {
    /// The folder's checkpoint holds another experiment: the keys that differ, none of them allowed.
    #[error("{}", another_experiment(run_dir, refused))]
    AnotherExperiment { run_dir: PathBuf, refused: Vec<Change> },
    /// A checkpoint from before identities were stored: continued only with `--resume`.
    #[error(
        "{} has no identity.json (it was written before checkpoints recorded their experiment), so it \
         cannot be checked that it holds this one. Nothing was changed. Continue it as this experiment \
         with --resume, or start a new run with --name NEW_NAME",
        checkpoint.display()
    )]
    NoIdentity { checkpoint: PathBuf },
    /// Another process holds the folder's lock.
    #[error(
        "{} is in use by another `pe train` (pid {pid}); one process trains a run folder at a time. \
         Wait for it, stop it, or start a new run with --name NEW_NAME",
        run_dir.display()
    )]
    Busy { run_dir: PathBuf, pid: String },
    /// `--allow-change` named a key no resume may change.
    #[error("--allow-change {key}: only these keys may change when a run resumes: {}", RESUMABLE_KEYS.join(", "))]
    NotResumable { key: String },
}

impl Identity {
    pub fn new(
        config: &ExperimentConfig,
        dataset: DatasetIdentity,
        init: Option<InitIdentity>,
        teacher: Option<InitIdentity>,
    ) -> Self {
        Self { config: to_toml(config), dataset, init, teacher }
    }

    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `dir/identity.json` atomically: the other ranks of a new run read the run folder's
    /// copy while rank 0 writes it, and must find either no file or all of it (a half-written one
    /// failed a rank with "EOF while parsing").
    pub fn write(&self, dir: &Path) -> Result<()> {
        Ok(pe_data::atomic_file::write(&dir.join(FILE), serde_json::to_string_pretty(self)?)?)
    }

    /// Every key (dotted, data set ones under `dataset.`) whose value differs from `stored`.
    pub fn changes_since(&self, stored: &Identity) -> Result<Vec<Change>> {
        let (old, new) = (stored.flatten()?, self.flatten()?);
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let missing = || "(unset)".to_owned();
        Ok(keys
            .into_iter()
            .filter(|key| old.get(*key) != new.get(*key) && !NOT_IDENTITY.contains(&key.as_str()))
            // A fingerprint one side lacks cannot be compared (older run, older shard set).
            .filter(|key| {
                !key.ends_with("_fingerprint") || (old.contains_key(*key) && new.contains_key(*key))
            })
            .map(|key| Change {
                key: key.clone(),
                old: old.get(key).cloned().unwrap_or_else(missing),
                new: new.get(key).cloned().unwrap_or_else(missing),
            })
            .collect())
    }

    fn flatten(&self) -> Result<BTreeMap<String, String>> {
        let table: toml::Table =
            toml::from_str(&current_form(&self.config)).context("parsing a stored resolved recipe")?;
        let mut flat = BTreeMap::new();
        flatten_into(&mut flat, "", &toml::Value::Table(table));
        let dataset = toml::Value::try_from(&self.dataset)?;
        flatten_into(&mut flat, "dataset", &dataset);
        if let Some(init) = &self.init {
            flatten_into(&mut flat, "init", &toml::Value::try_from(init)?);
        }
        if let Some(teacher) = &self.teacher {
            flatten_into(&mut flat, "teacher", &toml::Value::try_from(teacher)?);
        }
        Ok(flat)
    }
}

/// A stored resolved recipe as this version of `pe` resolves it: keys added since it was written
/// take their defaults, so an upgrade alone never makes a run "another experiment". A recipe this
/// version cannot read (a key since removed) is compared as written.
fn current_form(stored: &str) -> String {
    match from_toml(stored) {
        Ok(config) => to_toml(&config),
        Err(_) => stored.to_owned(),
    }
}

fn flatten_into(out: &mut BTreeMap<String, String>, prefix: &str, value: &toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten_into(out, &key, value);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// Checks that `changes` (the stored run → this command) may be resumed: each changed key must be
/// allowed by `--allow-change` and resumable. Otherwise the error lists every change and the two
/// ways forward.
pub fn check_resume(changes: &[Change], allowed: &[String], run_dir: &Path) -> Result<(), RunConflict> {
    let refused: Vec<&Change> = changes.iter().filter(|c| !allowed.contains(&c.key)).collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(RunConflict::AnotherExperiment {
        run_dir: run_dir.to_owned(),
        refused: refused.into_iter().cloned().collect(),
    })
}

/// The message of [`RunConflict::AnotherExperiment`]: every change and the two ways forward.
fn another_experiment(run_dir: &Path, refused: &[Change]) -> String {
    let listed: Vec<String> =
        refused.iter().map(|c| format!("  {}: {} -> {}", c.key, c.old, c.new)).collect();
    let resumable: Vec<&str> =
        refused.iter().map(|c| c.key.as_str()).filter(|k| RESUMABLE_KEYS.contains(k)).collect();
    let mut message = format!(
        "{} holds another experiment; this command differs from it in (stored -> this command):\n{}\nNothing was changed. Either start a new run: add --name NEW_NAME (a new folder under the same runs_dir)",
        run_dir.display(),
        listed.join("\n")
    );
    if resumable.len() == refused.len() {
        message += &format!(
            ", or continue this run with the changes: add --resume --allow-change {}",
            resumable.join(" ")
        );
    } else {
        message += &format!(
            ". Only these keys may change when a run resumes (--resume --allow-change KEY): {}",
            RESUMABLE_KEYS.join(", ")
        );
    }
    message
}

/// Rejects `--allow-change` keys that no resume may change.
pub fn validate_allowed(allowed: &[String]) -> Result<(), RunConflict> {
    match allowed.iter().find(|key| !RESUMABLE_KEYS.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(RunConflict::NotResumable { key: key.clone() }),
    }
}

/// Removes the `identity.json` that earlier versions wrote into the run folder at its first start:
/// a start that never reached a checkpoint made it, and it must not make the corrected command
/// "another experiment". Only checkpoints carry the identity now.
pub fn remove_stale(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Appends what a resume changed to `run_dir/resume_changes.jsonl` (never rewritten).
pub fn record_changes(run_dir: &Path, step: u64, changes: &[Change]) -> Result<()> {
    let path = run_dir.join("resume_changes.jsonl");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let seconds =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let record = serde_json::json!({"unix_time": seconds, "resumed_at_step": step, "changes": changes});
    writeln!(file, "{record}").with_context(|| format!("writing {}", path.display()))
}

/// An exclusive lock on a run folder for the life of the process. The OS releases it when the
/// process dies, so a killed run never blocks its own resume.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run_dir/.lock`, or fails naming the pid that holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.trim().to_owned();
                return Err(RunConflict::Busy { run_dir: run_dir.to_owned(), pid }.into());
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(config: String) -> Identity {
        let dataset = DatasetIdentity {
            root: "data".into(),
            classes: vec!["a".into()],
            train_samples: 1,
            val_samples: 1,
            train_fingerprint: None,
            val_fingerprint: None,
        };
        Identity { config, dataset, init: None, teacher: None }
    }

    #[test]
    fn a_reader_finds_no_identity_or_all_of_it_while_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = identity("x = 1\n".repeat(2000));
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                for _ in 0..300 {
                    written.write(dir.path()).unwrap();
                }
            });
            let mut reads = 0;
            while !writer.is_finished() || reads == 0 {
                match Identity::read(dir.path()) {
                    Ok(Some(read)) => assert_eq!(read.config, written.config),
                    Ok(None) => {}
                    Err(e) => panic!("read {reads} saw a partial file: {e:#}"),
                }
                reads += 1;
            }
        });
    }

    #[test]
    fn a_key_added_since_the_run_was_stored_is_no_change_at_its_default() {
        let recipe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../experiments/fmnist_resnet_mini.toml");
        let config = crate::config::load_experiment(&recipe, &[]).expect("a shipped recipe").config;
        let current = to_toml(&config);
        // The same run stored by a version of `pe` that did not know `train.dist_timeout_s`.
        let stored: String =
            current.lines().filter(|l| !l.starts_with("dist_timeout_s")).collect::<Vec<_>>().join("\n");
        assert_ne!(stored, current);
        assert_eq!(identity(current.clone()).changes_since(&identity(stored.clone())).unwrap(), vec![]);
        // A real difference still shows.
        let longer = current.replace("epochs = 2\n", "epochs = 4\n");
        let changes = identity(longer).changes_since(&identity(stored)).unwrap();
        assert_eq!(changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["train.epochs"]);
    }
}
