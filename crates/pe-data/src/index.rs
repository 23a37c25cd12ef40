//! ImageFolder: the `(path, class)` list of `<root>/<split>/<class>/**/<image>`, cached in a small file.
//!
//! Classes are the sub-folder names sorted by code point and files are walked in sorted order, as
//! torchvision's `ImageFolder` does, so class indices and sample order match PyTorch. Listing 1.28M
//! ImageNet files costs seconds to minutes on network storage, so the list is written once to
//! `<root>/.pe-index-<split>.v1` and reused while the modification times of the split folder and every
//! folder below it are unchanged (adding, removing or renaming a file changes its folder's mtime; a
//! file rewritten in place is not noticed, which is fine: the path list is all the index holds).
//! A read-only dataset simply goes uncached.
//!
//! One class list per run: the training split defines the classes ([`ImageFolder::open`]); every other
//! split is opened with [`ImageFolder::open_with_classes`], which numbers its folders through that list
//! (a validation split lacking one class folder would otherwise shift every later label). The cache
//! always holds the split's own folder view and the mapping is applied after reading it, so a cached
//! index can never bypass the class list.

use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File extensions torchvision's `ImageFolder` accepts (case-insensitive).
pub const IMG_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

const MAGIC: &str = "pe-index v1";

/// Where the index cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexCache {
    /// `<root>/.pe-index-<split>.v1`, next to the split folder.
    Beside,
    /// An explicit file (e.g. inside the run folder when the dataset is read-only).
    At(PathBuf),
    /// Always walk the folders.
    Off,
}

/// How the index was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSource {
    /// Read from a valid cache file.
    Cache,
    /// Walked the folders and wrote the cache.
    ScannedAndCached,
    /// Walked the folders; no cache written (off, or not writable).
    Scanned,
}

/// An indexed ImageFolder split.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The split folder (`<root>/<split>`).
    pub dir: PathBuf,
    /// Class names (sorted folder names, or the given class list); a label is an index into this.
    pub classes: Vec<String>,
    /// Classes of the given list with no image in this split (always empty for [`ImageFolder::open`]).
    pub missing_classes: Vec<String>,
    /// `(path, label)` in torchvision's order.
    pub samples: Vec<(PathBuf, u32)>,
    /// Cache hit or walk.
    pub source: IndexSource,
}

fn mtime_ns(path: &Path) -> Result<u128> {
    let meta = std::fs::metadata(path).io_ctx("stat", path)?;
    let t = meta.modified().io_ctx("read mtime of", path)?;
    Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0))
}

/// Whether `path` has an image extension ([`IMG_EXTENSIONS`], any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMG_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let entry = entry.io_ctx("list", dir)?;
        let path = entry.path();
        // Follow symlinks, as torchvision's os.walk(followlinks=True) does.
        let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        out.push((entry.file_name().to_string_lossy().into_owned(), path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Walk one class folder recursively: image files (sorted) and every folder seen (for the cache key).
fn walk_class(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) -> Result<()> {
    dirs.push(dir.to_path_buf());
    for (_, path, is_dir) in sorted_entries(dir)? {
        if is_dir {
            walk_class(&path, files, dirs)?;
        } else if is_image(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// The shard member key of a sample, and its extension: its path below the split, extension
/// dropped, dots replaced (webdataset splits a member name at its first dot).
pub(crate) fn sample_key(split_dir: &Path, path: &Path) -> Result<(String, String)> {
    let rel = path.strip_prefix(split_dir).ok().and_then(|r| r.to_str()).ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        reason: "not a UTF-8 path below the split folder".into(),
    })?;
    let (stem, ext) = rel.rsplit_once('.').unwrap_or((rel, "jpg"));
    let ext = ext.to_ascii_lowercase();
    let ext = if ext == "jpeg" { "jpg".to_string() } else { ext };
    Ok((stem.replace('.', "_"), ext))
}

impl ImageFolder {
    /// Index `<root>/<split>`, the split that defines the classes (its sorted folder names), using
    /// the cache when it is valid. A class folder without images is an error.
    pub fn open(root: &Path, split: &str, cache: IndexCache) -> Result<Self> {
        let folder = Self::open_own(root, split, cache)?;
        let mut counts = vec![0usize; folder.classes.len()];
        for (_, label) in &folder.samples {
            counts[*label as usize] += 1;
        }
        if let Some(empty) = counts.iter().position(|&n| n == 0) {
            return Err(Error::EmptyClass(folder.dir.join(&folder.classes[empty])));
        }
        Ok(folder)
    }

    /// Index `<root>/<split>` with labels numbered by `classes` (the run's class list, from the
    /// training split or the devkit). A folder not in the list is an error naming it; classes with no
    /// image here (no folder, or an empty one) are listed in `missing_classes` for the caller to warn.
    pub fn open_with_classes(
        root: &Path,
        split: &str,
        classes: &[String],
        cache: IndexCache,
    ) -> Result<Self> {
        let own = Self::open_own(root, split, cache)?;
        let position: std::collections::HashMap<&str, u32> =
            classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
        let map = own
            .classes
            .iter()
            .map(|name| {
                position.get(name.as_str()).copied().ok_or_else(|| Error::Format {
                    path: own.dir.join(name),
                    reason: format!(
                        "class folder is not in the run's class list ({} classes, defined by the training \
                         split or the devkit); remove it or fix the split",
                        classes.len()
                    ),
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        let mut seen = vec![false; classes.len()];
        let samples: Vec<(PathBuf, u32)> = own
            .samples
            .into_iter()
            .map(|(p, label)| {
                let mapped = map[label as usize];
                seen[mapped as usize] = true;
                (p, mapped)
            })
            .collect();
        let missing_classes =
            classes.iter().zip(&seen).filter(|(_, &s)| !s).map(|(c, _)| c.clone()).collect();
        Ok(ImageFolder {
            dir: own.dir,
            classes: classes.to_vec(),
            missing_classes,
            samples,
            source: own.source,
        })
    }

    /// The split's own view: classes are its folder names (possibly empty ones), cached or walked.
    fn open_own(root: &Path, split: &str, cache: IndexCache) -> Result<Self> {
        let dir = root.join(split);
        if !dir.is_dir() {
            return Err(Error::MissingRoot(dir));
        }
        let cache_file = match cache {
            IndexCache::Beside => Some(root.join(format!(".pe-index-{split}.v1"))),
            IndexCache::At(p) => Some(p),
            IndexCache::Off => None,
        };
        if let Some(file) = &cache_file {
            if let Some(found) = Self::read_cache(&dir, file) {
                return Ok(found);
            }
        }
        let (mut folder, dirs) = Self::scan(&dir)?;
        if let Some(file) = &cache_file {
            if folder.write_cache(file, &dirs).is_ok() {
                folder.source = IndexSource::ScannedAndCached;
            }
        }
        Ok(folder)
    }

    /// Walk the split folder. Also returns the folders visited (their mtimes key the cache).
    fn scan(dir: &Path) -> Result<(Self, Vec<PathBuf>)> {
        let class_dirs: Vec<(String, PathBuf)> =
            sorted_entries(dir)?.into_iter().filter(|e| e.2).map(|(name, path, _)| (name, path)).collect();
        if class_dirs.is_empty() {
            return Err(Error::NoClasses(dir.to_path_buf()));
        }
        let mut samples = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        let mut classes = Vec::with_capacity(class_dirs.len());
        for (label, (name, path)) in class_dirs.into_iter().enumerate() {
            let mut files = Vec::new();
            walk_class(&path, &mut files, &mut dirs)?;
            samples.extend(files.into_iter().map(|f| (f, label as u32)));
            classes.push(name);
        }
        let folder = ImageFolder {
            dir: dir.to_path_buf(),
            classes,
            missing_classes: Vec::new(),
            samples,
            source: IndexSource::Scanned,
        };
        Ok((folder, dirs))
    }

    fn write_cache(&self, file: &Path, dirs: &[PathBuf]) -> Result<()> {
        use std::fmt::Write as _;
        let rel = |p: &Path| p.strip_prefix(&self.dir).ok().and_then(|r| r.to_str()).map(str::to_owned);
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}\n{} {}", dirs.len(), self.samples.len());
        for d in dirs {
            let r = rel(d).ok_or_else(|| Error::Config(format!("non-UTF-8 path {}", d.display())))?;
            let _ = writeln!(s, "{}\t{}", mtime_ns(d)?, r);
        }
        for c in &self.classes {
            let _ = writeln!(s, "{c}");
        }
        for (p, label) in &self.samples {
            let r = rel(p).ok_or_else(|| Error::Config(format!("non-UTF-8 path {}", p.display())))?;
            if r.contains(['\n', '\t']) {
                return Err(Error::Config("file name with a tab or newline: not cached".into()));
            }
            let _ = writeln!(s, "{label}\t{r}");
        }
        crate::atomic_file::write(file, s)
    }

    /// Read and validate a cache file; `None` when missing, stale or malformed (then we rescan).
    fn read_cache(dir: &Path, file: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(file).ok()?;
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut counts = lines.next()?.split(' ');
        let n_dirs: usize = counts.next()?.parse().ok()?;
        let n_samples: usize = counts.next()?.parse().ok()?;
        let mut n_classes = 0;
        for _ in 0..n_dirs {
            let (mtime, rel) = lines.next()?.split_once('\t')?;
            let d = if rel.is_empty() { dir.to_path_buf() } else { dir.join(rel) };
            if mtime_ns(&d).ok()? != mtime.parse::<u128>().ok()? {
                return None;
            }
            if !rel.is_empty() && !rel.contains('/') {
                n_classes += 1;
            }
        }
        let classes: Vec<String> =
            (0..n_classes).map(|_| lines.next().map(str::to_owned)).collect::<Option<_>>()?;
        let mut samples = Vec::with_capacity(n_samples);
        for _ in 0..n_samples {
            let (label, rel) = lines.next()?.split_once('\t')?;
            let label: u32 = label.parse().ok()?;
            if label as usize >= classes.len() {
                return None;
            }
            samples.push((dir.join(rel), label));
        }
        Some(ImageFolder {
            dir: dir.to_path_buf(),
            classes,
            missing_classes: Vec::new(),
            samples,
            source: IndexSource::Cache,
        })
    }

    /// What the split holds, whatever its location or format: a hash of its (sample key, label)
    /// pairs in key order, keys as the shard writer names samples (the path below the split,
    /// extension dropped). A folder and the shards written from it have the same fingerprint;
    /// the same data moved elsewhere too.
    pub fn fingerprint(&self) -> Result<String> {
        let mut keyed: Vec<(String, u32)> = Vec::with_capacity(self.samples.len());
        for (path, label) in &self.samples {
            keyed.push((sample_key(&self.dir, path)?.0, *label));
        }
        keyed.sort_unstable();
        // FNV-1a, 64 bits: stable across versions and platforms (std's hashers are not).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (key, label) in &keyed {
            for byte in key.bytes().chain([0x1f]).chain(label.to_string().bytes()).chain([0x1e]) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Ok(format!("{hash:016x}/{}", keyed.len()))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no samples (never, for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn classes_sorted_files_sorted_non_images_skipped() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        touch(&r.join("train/b_dog/2.JPEG"));
        touch(&r.join("train/b_dog/1.jpg"));
        touch(&r.join("train/B_cat/x.png"));
        touch(&r.join("train/a/nested/z.jpeg"));
        touch(&r.join("train/a/y.jpeg"));
        touch(&r.join("train/a/notes.txt"));
        touch(&r.join("train/README"));
        let f = ImageFolder::open(r, "train", IndexCache::Off).unwrap();
        // Code-point order: 'B' < 'a' < 'b'.
        assert_eq!(f.classes, vec!["B_cat", "a", "b_dog"]);
        let names: Vec<(String, u32)> = f
            .samples
            .iter()
            .map(|(p, l)| (p.strip_prefix(r.join("train")).unwrap().display().to_string(), *l))
            .collect();
        assert_eq!(
            names,
            vec![
                ("B_cat/x.png".into(), 0),
                ("a/nested/z.jpeg".into(), 1),
                ("a/y.jpeg".into(), 1),
                ("b_dog/1.jpg".into(), 2),
                ("b_dog/2.JPEG".into(), 2)
            ]
        );
    }

    #[test]
    fn cache_is_written_reused_and_invalidated() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        touch(&r.join("val/c1/a.jpg"));
        touch(&r.join("val/c2/b.jpg"));
        let first = ImageFolder::open(r, "val", IndexCache::Beside).unwrap();
        assert_eq!(first.source, IndexSource::ScannedAndCached);
        assert!(r.join(".pe-index-val.v1").exists());
        let second = ImageFolder::open(r, "val", IndexCache::Beside).unwrap();
        assert_eq!(second.source, IndexSource::Cache);
        assert_eq!(second.samples, first.samples);
        assert_eq!(second.classes, first.classes);
        // Adding a file changes the class folder's mtime. Sleep past coarse-mtime filesystems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        touch(&r.join("val/c2/c.jpg"));
        let third = ImageFolder::open(r, "val", IndexCache::Beside).unwrap();
        assert_ne!(third.source, IndexSource::Cache);
        assert_eq!(third.len(), 3);
        // A corrupt cache file is ignored, not trusted.
        std::fs::write(r.join(".pe-index-val.v1"), "pe-index v1\n1 5\ngarbage").unwrap();
        assert_eq!(ImageFolder::open(r, "val", IndexCache::Beside).unwrap().len(), 3);
    }

    #[test]
    fn missing_root_and_empty_class_name_the_path() {
        let t = tempfile::tempdir().unwrap();
        let err = ImageFolder::open(t.path(), "train", IndexCache::Off).unwrap_err();
        assert!(err.to_string().contains(&t.path().join("train").display().to_string()), "{err}");
        std::fs::create_dir_all(t.path().join("train")).unwrap();
        assert!(matches!(ImageFolder::open(t.path(), "train", IndexCache::Off), Err(Error::NoClasses(_))));
        touch(&t.path().join("train/full/a.jpg"));
        std::fs::create_dir_all(t.path().join("train/empty")).unwrap();
        let err = ImageFolder::open(t.path(), "train", IndexCache::Off).unwrap_err();
        assert!(matches!(&err, Error::EmptyClass(p) if p.ends_with("train/empty")), "{err}");
        assert!(err.to_string().contains("train/empty"));
    }

    fn names(classes: &[&str]) -> Vec<String> {
        classes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn val_split_missing_a_class_keeps_training_labels() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for c in ["a", "b", "c"] {
            touch(&r.join(format!("train/{c}/1.jpg")));
        }
        touch(&r.join("val/a/x.jpg"));
        touch(&r.join("val/c/y.jpg"));
        std::fs::create_dir_all(r.join("val/b")).unwrap(); // an empty folder is a missing class too
        let train = ImageFolder::open(r, "train", IndexCache::Beside).unwrap();
        // Twice: the second open reads the cache, which must go through the class list again.
        for expect in [IndexSource::ScannedAndCached, IndexSource::Cache] {
            let val = ImageFolder::open_with_classes(r, "val", &train.classes, IndexCache::Beside).unwrap();
            assert_eq!(val.source, expect);
            assert_eq!(val.classes, names(&["a", "b", "c"]));
            assert_eq!(val.missing_classes, names(&["b"]));
            let labels: Vec<u32> = val.samples.iter().map(|s| s.1).collect();
            assert_eq!(labels, vec![0, 2]); // split-local numbering would have given [0, 1]
        }
        // A cache written by a plain open (own numbering) is remapped too.
        std::fs::remove_dir(r.join("val/b")).unwrap();
        let own = ImageFolder::open(r, "val", IndexCache::Beside).unwrap();
        assert_eq!(own.samples.iter().map(|s| s.1).collect::<Vec<_>>(), vec![0, 1]);
        let val = ImageFolder::open_with_classes(r, "val", &train.classes, IndexCache::Beside).unwrap();
        assert_eq!(val.source, IndexSource::Cache);
        assert_eq!(val.samples.iter().map(|s| s.1).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn folder_outside_the_class_list_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        touch(&r.join("val/a/x.jpg"));
        touch(&r.join("val/zebra/y.jpg"));
        let classes = names(&["a", "b"]);
        let err = ImageFolder::open_with_classes(r, "val", &classes, IndexCache::Beside).unwrap_err();
        assert!(err.to_string().contains("val/zebra"), "{err}");
        assert!(err.to_string().contains("not in the run's class list"), "{err}");
        // Still an error when the (otherwise valid) index comes from the cache.
        ImageFolder::open(r, "val", IndexCache::Beside).unwrap();
        assert!(ImageFolder::open_with_classes(r, "val", &classes, IndexCache::Beside).is_err());
    }
}
