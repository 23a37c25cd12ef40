//! `pe prepare shards`: pack an ImageFolder's splits into shuffled tar shards plus `index.json`.
//!
//! Each sample becomes two tar members, `<key>.<ext>` (the image bytes as stored, not re-encoded) and
//! `<key>.cls` (the label as decimal text), webdataset's ImageNet convention. The key is the image's
//! path below its split without the extension (dots replaced, since webdataset splits at the first
//! dot), e.g. `n01440764/n01440764_10026`. Samples are written in a fixed shuffled order so each shard
//! mixes classes; the training split defines the class list and the others are mapped through it.
//!
//! Interruption: shards are written as `*.tar.tmp` and renamed when complete, and `index.json` is
//! written last; a run that finds no index starts the splits afresh, one that finds it does nothing
//! (when it was written with the same settings; other settings are refused unless forced, which
//! rebuilds the set).

use super::index::{ShardIndex, ShardInfo, SplitShards, WrittenWith};
use crate::error::{Error, IoContext, Result};
use crate::index::{sample_key, ImageFolder, IndexCache};
use crate::rng::{Rng, Stream};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardWriteOptions {
    /// Target shard size in bytes (a shard closes before the sample that would exceed it).
    pub shard_bytes: u64,
    /// Seed of the write order.
    pub seed: u64,
    /// The split that defines the class list, then the others (missing ones are skipped).
    pub splits: Vec<String>,
    /// Rebuild a complete set that was written with other settings.
    pub force: bool,
}

impl Default for ShardWriteOptions {
    fn default() -> Self {
        ShardWriteOptions {
            shard_bytes: 1 << 30,
            seed: 0,
            splits: vec!["train".into(), "val".into()],
            force: false,
        }
    }
}

impl ShardWriteOptions {
    fn written_with(&self) -> WrittenWith {
        WrittenWith { shard_bytes: self.shard_bytes, seed: self.seed, splits: self.splits.clone() }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardWriteSummary {
    /// The index (also on disk).
    pub index: ShardIndex,
    /// False when a complete shard set was already there.
    pub written: bool,
}

impl std::fmt::Display for ShardWriteSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.written { "wrote" } else { "already complete:" };
        write!(f, "{verb} {} classes", self.index.classes.len())?;
        for (name, s) in &self.index.splits {
            let bytes: u64 = s.shards.iter().map(|x| x.bytes).sum();
            write!(
                f,
                "; {name}: {} samples in {} shards ({:.1} MB)",
                s.samples,
                s.shards.len(),
                bytes as f64 / 1e6
            )?;
        }
        for (split, s) in &self.index.splits {
            if !s.missing_classes.is_empty() {
                let (n, names) = (s.missing_classes.len(), s.missing_classes.join(", "));
                write!(f, "; warning: {split} has no sample of {n} class(es): {names}")?;
            }
        }
        Ok(())
    }
}

/// Pack `<from>/<split>` for each split into `<to>/<split>/NNNNNN.tar`; `progress(done, total)` is
/// called per sample of the split being written.
pub fn write_shards(
    from: &Path,
    to: &Path,
    opts: &ShardWriteOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<ShardWriteSummary> {
    if let Ok(index) = ShardIndex::load(to) {
        let asked = opts.written_with();
        match &index.written_with {
            Some(had) if *had != asked && !opts.force => {
                return Err(Error::Config(format!(
                    "{} holds a complete shard set written with {had}; this asks for {asked}. Rebuild \
                     it with --force, or write to another --to",
                    to.display()
                )));
            }
            // Written before the settings were recorded: nothing to compare, keep it unless forced.
            _ if !opts.force => {
                if !to.join(super::index::INFO_FILE).exists() {
                    index.save_info(to)?; // a set an older `pe prepare shards` wrote
                }
                return Ok(ShardWriteSummary { index, written: false });
            }
            _ => remove_set(to, &index)?,
        }
    }
    if opts.shard_bytes == 0 {
        return Err(Error::Config("shard size must be > 0".into()));
    }
    let Some(defining) = opts.splits.first() else {
        return Err(Error::Config("no split to write".into()));
    };
    let train = ImageFolder::open(from, defining, IndexCache::Beside)?;
    let mut index = ShardIndex::new(train.classes.clone());
    for (i, split) in opts.splits.iter().enumerate() {
        let folder = if i == 0 {
            train.clone()
        } else if from.join(split).is_dir() {
            ImageFolder::open_with_classes(from, split, &index.classes, IndexCache::Beside)?
        } else {
            continue;
        };
        let mut shards =
            write_split(&folder, &to.join(split), opts, &mut |done, total| progress(split, done, total))?;
        shards.missing_classes = folder.missing_classes.clone();
        shards.fingerprint = Some(folder.fingerprint()?);
        index.splits.insert(split.clone(), shards);
    }
    index.written_with = Some(opts.written_with());
    index.save_info(to)?;
    index.save(to)?;
    Ok(ShardWriteSummary { index, written: true })
}

/// Removes a shard set's index and its splits' shard files (before a forced rebuild).
fn remove_set(to: &Path, index: &ShardIndex) -> Result<()> {
    let path = to.join(super::INDEX_FILE);
    std::fs::remove_file(&path).io_ctx("remove", &path)?;
    for (split, shards) in &index.splits {
        for shard in &shards.shards {
            let file = to.join(split).join(&shard.file);
            std::fs::remove_file(&file).io_ctx("remove", &file)?;
        }
    }
    Ok(())
}

fn append(tar: &mut tar::Builder<impl Write>, name: &str, data: &[u8], path: &Path) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0); // reproducible shards
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data).io_ctx("append to", path)
}

fn write_split(
    folder: &ImageFolder,
    dir: &Path,
    opts: &ShardWriteOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SplitShards> {
    clear_shards(dir)?;
    let order = Rng::keyed(Stream::Shuffle, &[opts.seed, u64::MAX]).permutation(folder.len());
    let mut out = SplitShards::default();
    let mut current: Option<(tar::Builder<std::io::BufWriter<std::fs::File>>, PathBuf, ShardInfo)> = None;
    for (done, &i) in order.iter().enumerate() {
        let (path, label) = &folder.samples[i];
        let bytes = std::fs::read(path).io_ctx("read", path)?;
        let (key, ext) = sample_key(&folder.dir, path)?;
        let cls = label.to_string();
        let size = tar_size(bytes.len()) + tar_size(cls.len());
        if current.as_ref().is_some_and(|c| c.2.bytes + size > opts.shard_bytes && c.2.samples > 0) {
            if let Some(c) = current.take() {
                out.shards.push(finish(c)?);
            }
        }
        let (tar, tmp, info) = match &mut current {
            Some(c) => c,
            None => {
                let file = format!("{:06}.tar", out.shards.len());
                let tmp = dir.join(format!("{file}.tmp"));
                let f = std::fs::File::create(&tmp).io_ctx("create", &tmp)?;
                let tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
                current.insert((tar, tmp, ShardInfo { file, samples: 0, bytes: 0 }))
            }
        };
        append(tar, &format!("{key}.{ext}"), &bytes, tmp)?;
        append(tar, &format!("{key}.cls"), cls.as_bytes(), tmp)?;
        info.samples += 1;
        info.bytes += size;
        out.samples += 1;
        progress(done + 1, folder.len());
    }
    if let Some(c) = current.take() {
        out.shards.push(finish(c)?);
    }
    Ok(out)
}

/// Start clean: an interrupted run may have left shards of another layout. Only shard files are
/// removed; anything else there (say `--to` pointing at the image folder) is refused.
fn clear_shards(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).io_ctx("create directory", dir)?;
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let path = entry.io_ctx("list", dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !(path.is_file() && (name.ends_with(".tar") || name.ends_with(".tar.tmp"))) {
            return Err(Error::Format {
                path: path.clone(),
                reason: "not a shard: refusing to write shards into a folder holding other files".into(),
            });
        }
        std::fs::remove_file(&path).io_ctx("remove", &path)?;
    }
    Ok(())
}

/// Bytes a member takes in a tar: 512-byte header plus data padded to 512.
fn tar_size(len: usize) -> u64 {
    512 + (len as u64).div_ceil(512) * 512
}

fn finish(
    (tar, tmp, mut info): (tar::Builder<std::io::BufWriter<std::fs::File>>, PathBuf, ShardInfo),
) -> Result<ShardInfo> {
    let mut w = tar.into_inner().io_ctx("finish", &tmp)?;
    w.flush().io_ctx("write", &tmp)?;
    w.get_ref().sync_all().io_ctx("sync", &tmp)?;
    let done = tmp.with_extension(""); // NNNNNN.tar.tmp -> NNNNNN.tar
    std::fs::rename(&tmp, &done).io_ctx("rename into", &done)?;
    info.bytes = std::fs::metadata(&done).io_ctx("stat", &done)?.len();
    Ok(info)
}
