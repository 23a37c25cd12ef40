//! `pe prepare imagenet`: the ImageNet-1k archives (or Kaggle's extracted copy) -> the ImageFolder our
//! recipes read, `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`.
//!
//! The official archives are streamed, never extracted twice: the training tar holds one tar per class,
//! each read straight into its class folder; the flat validation tar is sorted into class folders with
//! the devkit's labels ([`labels`]). Kaggle's copy is hard-linked (copied across file systems).
//!
//! The classes' names go to `<to>/class_names.tsv` ([`class_names`]), written after the checks and before
//! the marker.
//!
//! Interruption: a class folder is filled under `<to>/.partial/` and renamed into `train/` when complete,
//! a validation file likewise, so a rerun skips what is done and redoes the rest; the marker
//! `<to>/.pe-prepared` is written last, after the checks, and a folder without it is never complete.
//! A complete folder is left as it is, except that one from before `class_names.tsv` gets that file
//! (from the source's class list, which must match its training folders).
//! Checks: training classes = the devkit's wnids, sorted (= torchvision's indices); every validation
//! image labelled and filed; with the full 1,000-class devkit, exactly 1,281,167 / 50,000 images.

pub mod class_names;
pub mod labels;

use crate::error::{Error, IoContext, Result};
use crate::index::{ImageFolder, IndexCache};
pub use class_names::{read_class_names, write_class_names, CLASS_NAMES_FILE};
pub use labels::Labels;
use std::path::{Path, PathBuf};

/// The marker written last.
pub const MARKER: &str = ".pe-prepared";
/// Full ImageNet-1k sizes, checked when the devkit lists 1,000 classes.
pub const FULL: (usize, usize, usize) = (1_000, 1_281_167, 50_000);

/// Where the data comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `ILSVRC2012_img_train.tar`, `ILSVRC2012_img_val.tar`, `ILSVRC2012_devkit_t12.tar.gz`.
    Archives {
        /// Tar of per-class tars.
        train_tar: PathBuf,
        /// Flat tar of validation JPEGs.
        val_tar: PathBuf,
        /// Devkit tar.gz.
        devkit: PathBuf,
    },
    /// Kaggle's `imagenet-object-localization-challenge` folder (`ILSVRC/Data/CLS-LOC/{train,val}`,
    /// `LOC_synset_mapping.txt`, `LOC_val_solution.csv`).
    Kaggle(PathBuf),
}

/// What the folder holds at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Classes.
    pub classes: usize,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// True when the full-size counts were checked.
    pub full_size_checked: bool,
    /// False when the marker was already there (nothing done but, for a folder from before
    /// `class_names.tsv`, writing that file).
    pub written: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.written { "prepared" } else { "already prepared" };
        write!(f, "{state}: {} classes, {} train / {} val images", self.classes, self.train, self.val)?;
        if !self.full_size_checked {
            write!(f, " (not the 1,000-class devkit: full-size counts not checked)")?;
        }
        Ok(())
    }
}

/// Progress callback: (phase, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Prepare `to` from `source`; reruns continue where an interrupted run stopped.
pub fn prepare(source: &Source, to: &Path, progress: Progress) -> Result<Summary> {
    let marker = to.join(MARKER);
    let names = to.join(CLASS_NAMES_FILE);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if !names.exists() {
            names_of_prepared(source, to, &names)?;
        }
        let n = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok());
        return Ok(Summary {
            classes: n("classes=").unwrap_or(0),
            train: n("train=").unwrap_or(0),
            val: n("val=").unwrap_or(0),
            full_size_checked: n("full=").unwrap_or(0) == 1,
            written: false,
        });
    }
    let labels = read_labels(source)?;
    let partial = to.join(".partial");
    for d in [to.join("train"), to.join("val"), partial.clone()] {
        std::fs::create_dir_all(&d).io_ctx("create directory", &d)?;
    }
    match source {
        Source::Archives { train_tar, val_tar, .. } => {
            train_from_tar(train_tar, to, &labels, progress)?;
            val_from_tar(val_tar, to, &labels, progress)?;
        }
        Source::Kaggle(dir) => {
            let cls_loc = dir.join("ILSVRC/Data/CLS-LOC");
            train_from_kaggle(&cls_loc.join("train"), to, &labels, progress)?;
            val_from_kaggle(&cls_loc.join("val"), to, &labels, progress)?;
        }
    }
    let summary = check(to, &labels)?;
    write_class_names(&names, &labels.class_names())?;
    std::fs::remove_dir_all(&partial).io_ctx("remove", &partial)?;
    let text = format!(
        "classes={}\ntrain={}\nval={}\nfull={}\n",
        summary.classes, summary.train, summary.val, summary.full_size_checked as u8
    );
    std::fs::write(&marker, text).io_ctx("write", &marker)?;
    Ok(summary)
}

fn read_labels(source: &Source) -> Result<Labels> {
    match source {
        Source::Archives { devkit, .. } => labels::from_devkit(devkit),
        Source::Kaggle(dir) => labels::from_kaggle(dir),
    }
}

/// Writes `names` for a complete folder prepared before the file existed; its training folders must be
/// the source's classes.
fn names_of_prepared(source: &Source, to: &Path, names: &Path) -> Result<()> {
    let class_names = read_labels(source)?.class_names();
    let train = to.join("train");
    let mut folders = Vec::new();
    for name in sorted_names(&train)? {
        if train.join(&name).is_dir() {
            folders.push(name);
        }
    }
    if !class_names.iter().map(|(wnid, _)| wnid).eq(folders.iter()) {
        return Err(Error::Format {
            path: train,
            reason: format!(
                "the {} prepared classes are not the source's {} wnids: cannot write {CLASS_NAMES_FILE}",
                folders.len(),
                class_names.len()
            ),
        });
    }
    write_class_names(names, &class_names)
}

/// The file name part of a tar member path.
fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn check_wnid<'a>(labels: &Labels, wnid: &'a str, archive: &Path) -> Result<&'a str> {
    if labels.wnids.iter().any(|w| w == wnid) {
        Ok(wnid)
    } else {
        Err(Error::Format {
            path: archive.to_path_buf(),
            reason: format!("class {wnid} is not in the devkit"),
        })
    }
}

/// Fill `<to>/.partial/train/<wnid>` with `fill`, then rename it to `<to>/train/<wnid>`; skipped when
/// the class folder is already there (finished by an earlier run).
fn class_folder(to: &Path, wnid: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let done = to.join("train").join(wnid);
    if done.is_dir() {
        return Ok(());
    }
    let tmp = to.join(".partial/train").join(wnid);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).io_ctx("remove", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).io_ctx("create directory", &tmp)?;
    fill(&tmp)?;
    std::fs::rename(&tmp, &done).io_ctx("rename into", &done)
}

fn train_from_tar(path: &Path, to: &Path, labels: &Labels, progress: Progress) -> Result<()> {
    let file = std::fs::File::open(path).io_ctx("open", path)?;
    // entries_with_seek: classes finished by an earlier run are skipped without reading them.
    let mut outer = tar::Archive::new(file);
    let total = labels.wnids.len() as u64;
    let mut done = 0;
    for entry in outer.entries_with_seek().io_ctx("read", path)? {
        let entry = entry.io_ctx("read", path)?;
        let name = entry.path().io_ctx("read", path)?.to_string_lossy().into_owned();
        let Some(wnid) = base_name(&name).strip_suffix(".tar") else { continue };
        let wnid = check_wnid(labels, wnid, path)?.to_owned();
        class_folder(to, &wnid, |dir| {
            let mut inner = tar::Archive::new(entry);
            for image in inner.entries().io_ctx("read", path)? {
                let mut image = image.io_ctx("read", path)?;
                if !image.header().entry_type().is_file() {
                    continue;
                }
                let member = image.path().io_ctx("read", path)?.to_string_lossy().into_owned();
                let out = dir.join(base_name(&member));
                let mut f = std::fs::File::create(&out).io_ctx("create", &out)?;
                std::io::copy(&mut image, &mut f).io_ctx("write", &out)?;
            }
            Ok(())
        })?;
        done += 1;
        progress("train", done, total);
    }
    Ok(())
}

/// Write one validation image atomically into `val/<wnid>/`, unless an earlier run did.
fn val_file(to: &Path, name: &str, wnid: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = to.join("val").join(wnid);
    let out = dir.join(name);
    if out.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).io_ctx("create directory", &dir)?;
    let tmp = to.join(".partial").join(name);
    write(&tmp)?;
    std::fs::rename(&tmp, &out).io_ctx("rename into", &out)
}

fn val_label<'a>(labels: &'a Labels, name: &str, archive: &Path) -> Result<&'a str> {
    labels.val.get(name).map(String::as_str).ok_or_else(|| Error::Format {
        path: archive.to_path_buf(),
        reason: format!("{name} has no label in the ground truth"),
    })
}

fn val_from_tar(path: &Path, to: &Path, labels: &Labels, progress: Progress) -> Result<()> {
    let file = std::fs::File::open(path).io_ctx("open", path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let total = labels.val.len() as u64;
    let mut done = 0;
    for entry in archive.entries().io_ctx("read", path)? {
        let mut entry = entry.io_ctx("read", path)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().io_ctx("read", path)?.to_string_lossy().into_owned();
        let name = base_name(&member).to_owned();
        let wnid = val_label(labels, &name, path)?;
        val_file(to, &name, wnid, |tmp| {
            let mut f = std::fs::File::create(tmp).io_ctx("create", tmp)?;
            std::io::copy(&mut entry, &mut f).io_ctx("write", tmp).map(drop)
        })?;
        done += 1;
        progress("val", done, total);
    }
    Ok(())
}

/// Hard-link `from` to `to`, copying when they are on different file systems.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).io_ctx("copy", from).map(drop)
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).io_ctx("list", dir)? {
        names.push(e.io_ctx("list", dir)?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn train_from_kaggle(dir: &Path, to: &Path, labels: &Labels, progress: Progress) -> Result<()> {
    let total = labels.wnids.len() as u64;
    for (done, wnid) in sorted_names(dir)?.into_iter().enumerate() {
        check_wnid(labels, &wnid, dir)?;
        let src = dir.join(&wnid);
        class_folder(to, &wnid, |tmp| {
            for name in sorted_names(&src)? {
                link_or_copy(&src.join(&name), &tmp.join(&name))?;
            }
            Ok(())
        })?;
        progress("train", done as u64 + 1, total);
    }
    Ok(())
}

fn val_from_kaggle(dir: &Path, to: &Path, labels: &Labels, progress: Progress) -> Result<()> {
    let names = sorted_names(dir)?;
    let total = names.len() as u64;
    for (done, name) in names.into_iter().enumerate() {
        let wnid = val_label(labels, &name, dir)?;
        val_file(to, &name, wnid, |tmp| link_or_copy(&dir.join(&name), tmp))?;
        progress("val", done as u64 + 1, total);
    }
    Ok(())
}

/// The end-of-run checks (see the module doc).
fn check(to: &Path, labels: &Labels) -> Result<Summary> {
    let bad = |reason: String| Error::Format { path: to.to_path_buf(), reason };
    let train = ImageFolder::open(to, "train", IndexCache::Beside)?;
    let mut sorted = labels.wnids.clone();
    sorted.sort();
    if train.classes != sorted {
        let missing: Vec<&String> = sorted.iter().filter(|w| !train.classes.contains(w)).take(5).collect();
        return Err(bad(format!(
            "training classes are not the devkit's {} wnids (have {}; missing e.g. {missing:?})",
            sorted.len(),
            train.classes.len()
        )));
    }
    let val = ImageFolder::open_with_classes(to, "val", &train.classes, IndexCache::Beside)?;
    if val.len() != labels.val.len() {
        return Err(bad(format!(
            "{} validation images, the ground truth lists {}",
            val.len(),
            labels.val.len()
        )));
    }
    let full = labels.wnids.len() == FULL.0;
    if full && (train.len(), val.len()) != (FULL.1, FULL.2) {
        return Err(bad(format!(
            "{} train / {} val images, ImageNet-1k has {} / {}: an archive is incomplete",
            train.len(),
            val.len(),
            FULL.1,
            FULL.2
        )));
    }
    Ok(Summary {
        classes: train.num_classes(),
        train: train.len(),
        val: val.len(),
        full_size_checked: full,
        written: true,
    })
}
