//! Reading a shard set: [`ShardSet`] (one split: a `pe prepare shards` index, or a WebDataset URL list
//! with its sample counts) and the reader thread that streams the samples an epoch needs, shard by
//! shard, front to back.
//!
//! The reader opens each shard once (the next one is opened while the current one is walked, so a
//! remote shard's connection and first chunks are ready when needed), walks its members in order,
//! keeps only the samples the plan asks for (skipped ones are read past, not decoded: that is how a
//! resumed epoch starts mid-shard) and stops a shard after its last needed sample. A shard that is
//! truncated or holds fewer samples than its counts say yields one bad sample per sample it could
//! not deliver, naming the shard; the loader replaces those like unreadable files. A shard the
//! stream could not read at all (missing, or the network failing after its retries) is fatal: the
//! epoch fails with the URL named rather than silently train without it.

use super::index::{ShardIndex, ShardInfo};
use super::plan::Planned;
use crate::error::{Error, Result};
use crate::index::IMG_EXTENSIONS;
use crate::wds::retry::open_retrying;
use crate::wds::{LabelKey, ShardUrl};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

/// One split of a shard set.
#[derive(Clone, Debug)]
pub struct ShardSet {
    /// `<root>/<split>`.
    pub dir: PathBuf,
    /// The run's class list; labels are indices into it.
    pub classes: Vec<String>,
    /// Classes of the run's list with no sample in this split (warn about these).
    pub missing_classes: Vec<String>,
    /// The shards, in file order.
    pub shards: Vec<ShardInfo>,
    /// The fingerprint of the folder split the shards were written from (see
    /// [`crate::ImageFolder::fingerprint`]), if the index recorded it.
    pub fingerprint: Option<String>,
    /// Index label -> run label.
    label_map: Vec<u32>,
    /// First flat sample number of each shard (shard i's member m is sample `first[i] + m`).
    first: Vec<usize>,
    /// Where each shard is.
    urls: Vec<ShardUrl>,
    /// Which member holds the label.
    label: LabelKey,
    /// Failed reads of a shard stream retried before the epoch fails.
    retries: u32,
}

/// A sample as read from a shard: still encoded.
#[derive(Clone, Debug)]
pub struct RawSample {
    /// Image file bytes.
    pub bytes: Vec<u8>,
    /// Label in the run's class list.
    pub label: u32,
    /// Flat sample number in the split.
    pub index: usize,
}

/// Why a planned sample was not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// The shard could not be read at all: the epoch fails instead of replacing the sample.
    pub fatal: bool,
}

impl Failure {
    fn bad(reason: impl Into<String>) -> Self {
        Failure { reason: reason.into(), fatal: false }
    }
}

/// What the reader delivers for one planned sample, keyed by (shard, member): the sample, or why not.
pub type Delivery = ((usize, usize), std::result::Result<RawSample, Failure>);

impl ShardSet {
    /// Open `<root>/<split>` with the index's own class list (the defining split).
    pub fn open(root: &Path, split: &str) -> Result<Self> {
        let index = ShardIndex::load(root)?;
        let classes = index.classes.clone();
        Self::from_index(root, split, index, &classes)
    }

    /// Open `<root>/<split>` with labels numbered by the run's class list. A class of the index that
    /// is not in the list is an error naming it.
    pub fn open_with_classes(root: &Path, split: &str, classes: &[String]) -> Result<Self> {
        Self::from_index(root, split, ShardIndex::load(root)?, classes)
    }

    fn from_index(root: &Path, split: &str, index: ShardIndex, classes: &[String]) -> Result<Self> {
        let dir = root.join(split);
        let Some(shards) = index.splits.get(split).cloned() else {
            return Err(Error::Format {
                path: root.join(super::INDEX_FILE),
                reason: format!("the shard set has no split {split:?}"),
            });
        };
        let label_map = index
            .classes
            .iter()
            .map(|c| {
                classes.iter().position(|x| x == c).map(|p| p as u32).ok_or_else(|| Error::Format {
                    path: root.join(super::INDEX_FILE),
                    reason: format!("class {c:?} is not in the run's class list ({} classes)", classes.len()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let missing_classes = classes
            .iter()
            .filter(|c| !index.classes.contains(c) || shards.missing_classes.contains(c))
            .cloned()
            .collect();
        let urls = shards.shards.iter().map(|s| ShardUrl::Local(dir.join(&s.file))).collect();
        Ok(ShardSet {
            first: first_samples(&shards.shards),
            dir,
            classes: classes.to_vec(),
            missing_classes,
            shards: shards.shards,
            fingerprint: shards.fingerprint,
            label_map,
            urls,
            label: LabelKey::default(),
            retries: 0,
        })
    }

    /// Retry a failed shard read `retries` times (re-opened, with backoff) before the epoch fails;
    /// sets opened from an index start with none.
    pub fn with_retries(self, retries: u32) -> Self {
        ShardSet { retries, ..self }
    }

    /// A WebDataset split: `urls` with `counts[i]` samples each, labels already numbered by
    /// `classes`; `location` names the set in messages.
    pub fn from_urls(
        location: PathBuf,
        urls: Vec<ShardUrl>,
        counts: &[usize],
        classes: Vec<String>,
        label: LabelKey,
        retries: u32,
    ) -> Self {
        let shards: Vec<ShardInfo> = urls
            .iter()
            .zip(counts)
            .map(|(url, &samples)| ShardInfo { file: url.to_string(), samples, bytes: 0 })
            .collect();
        ShardSet {
            first: first_samples(&shards),
            dir: location,
            label_map: (0..classes.len() as u32).collect(),
            classes,
            missing_classes: Vec::new(),
            shards,
            fingerprint: None,
            urls,
            label,
            retries,
        }
    }

    /// Total samples.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.samples).sum()
    }

    /// True when the split has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample counts per shard (the plan's input).
    pub fn counts(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.samples).collect()
    }

    /// Where shard `i` is.
    pub fn shard_url(&self, i: usize) -> &ShardUrl {
        &self.urls[i]
    }

    /// `<shard>#<member number>` of flat sample `index` (the index keeps no member keys).
    pub fn member_path(&self, index: usize) -> PathBuf {
        let shard = self.first.partition_point(|&first| first <= index) - 1;
        self.member_name(shard, index - self.first[shard])
    }

    /// `<shard>#<member number>`, for reports.
    pub fn member_name(&self, shard: usize, member: usize) -> PathBuf {
        PathBuf::from(format!("{}#{member}", self.urls[shard]))
    }

    /// Read the samples of `plan` (each once, in stream order) and send them on `tx`; returns early
    /// when the receiver hangs up.
    pub fn stream(&self, plan: &[Planned], tx: &SyncSender<Delivery>) {
        // Needed members per shard, shards in the order the stream first reaches them.
        let mut order: Vec<usize> = Vec::new();
        let mut needed: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut by_position: Vec<&Planned> = plan.iter().collect();
        by_position.sort_by_key(|p| p.position);
        for p in by_position {
            let members = needed.entry(p.shard).or_insert_with(|| {
                order.push(p.shard);
                Vec::new()
            });
            if members.last() != Some(&p.member) {
                members.push(p.member);
            }
        }
        let mut shards = order.iter().map(|&s| (s, open_retrying(&self.urls[s], self.retries))).peekable();
        while let Some((shard, stream)) = shards.next() {
            shards.peek(); // opens the next shard, which starts reading ahead
            if !self.stream_shard(shard, &needed[&shard], stream, tx) {
                return;
            }
        }
    }

    /// One shard; false when the receiver is gone.
    fn stream_shard(
        &self,
        shard: usize,
        members: &[usize],
        (stream, gave_up): (crate::wds::open::ShardStream, crate::wds::retry::GaveUp),
        tx: &SyncSender<Delivery>,
    ) -> bool {
        let mut want = members.iter().copied().peekable();
        let mut hung_up = false;
        let send =
            |member: usize, r: std::result::Result<RawSample, Failure>| tx.send(((shard, member), r)).is_ok();
        let result = walk_tar(stream, &self.label, |member, sample| {
            // Needed samples the walk has passed were not where the index put them (duplicate keys).
            while let Some(m) = want.next_if(|&m| m < member) {
                if !send(m, Err(Failure::bad(format!("sample {m} not found in the shard")))) {
                    hung_up = true;
                    return Walk::Stop;
                }
            }
            match (want.peek(), sample) {
                (None, _) => Walk::Stop,
                (Some(&next), _) if next != member => Walk::Skip,
                (Some(_), None) => Walk::Read,
                (Some(_), Some(parsed)) => {
                    want.next();
                    let delivered = parsed
                        .and_then(|(bytes, label)| {
                            let label = *self.label_map.get(label as usize).ok_or_else(|| {
                                format!("label {label} is not below the {} classes", self.label_map.len())
                            })?;
                            Ok(RawSample { bytes, label, index: self.first[shard] + member })
                        })
                        .map_err(Failure::bad);
                    hung_up = !send(member, delivered);
                    if hung_up {
                        Walk::Stop
                    } else {
                        Walk::Skip
                    }
                }
            }
        });
        if hung_up {
            return false;
        }
        let gave_up = gave_up.lock().unwrap_or_else(|p| p.into_inner()).take();
        let failure = match (result, gave_up) {
            (_, Some(reason)) => Failure { reason, fatal: true },
            (Ok(_), None) => Failure::bad("the shard ends early (fewer samples than its counts say)"),
            (Err(e), None) => Failure::bad(e),
        };
        want.all(|m| send(m, Err(failure.clone())))
    }
}

/// First flat sample number of each shard.
fn first_samples(shards: &[ShardInfo]) -> Vec<usize> {
    shards
        .iter()
        .scan(0, |n, s| {
            let first = *n;
            *n += s.samples;
            Some(first)
        })
        .collect()
}

/// What the tar walk should do with the current sample.
pub(crate) enum Walk {
    /// Read its members' data, then call back with the sample.
    Read,
    /// Skip its data.
    Skip,
    /// Stop the walk.
    Stop,
}

type Parsed = std::result::Result<(Vec<u8>, u32), String>;

/// Walk the samples of a tar, grouped WebDataset's way: members sharing a key (the path up to the
/// first dot of the file name) form a sample; its image is the first `jpg|jpeg|png|webp|...` member,
/// its label the member `label` names; other members are ignored. `visit(member, None)` is asked at
/// each sample's first member whether to read it; for read samples `visit(member, Some(parsed))`
/// follows at its end. Returns when `visit` says stop or at the end of the stream; `Err` on a
/// broken file.
pub(crate) fn walk_tar(
    stream: impl Read,
    label_key: &LabelKey,
    mut visit: impl FnMut(usize, Option<Parsed>) -> Walk,
) -> std::result::Result<(), String> {
    let mut archive = tar::Archive::new(stream);
    let mut member: Option<usize> = None;
    let mut key = String::new();
    let mut reading = false;
    let (mut image, mut label): (Option<Vec<u8>>, Option<String>) = (None, None);
    let finish = |image: &mut Option<Vec<u8>>, label: &mut Option<String>| -> Parsed {
        let bytes = image.take().ok_or("no image member")?;
        let text = label.take().ok_or_else(|| format!("no .{} member", label_key.member()))?;
        Ok((bytes, label_key.parse(&text)?))
    };
    for entry in archive.entries().map_err(|e| format!("read: {e}"))? {
        let mut entry = entry.map_err(|e| format!("read: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| format!("member name: {e}"))?.to_string_lossy().into_owned();
        let (dir, base) = name.rsplit_once('/').map_or(("", name.as_str()), |(d, b)| (d, b));
        let (stem, ext) = base.split_once('.').unwrap_or((base, ""));
        let this_key = format!("{dir}/{stem}");
        if member.is_none() || this_key != key {
            if reading {
                if let Walk::Stop = visit(member.unwrap_or(0), Some(finish(&mut image, &mut label))) {
                    return Ok(());
                }
            }
            let m = member.map_or(0, |m| m + 1);
            member = Some(m);
            key = this_key;
            (image, label) = (None, None);
            reading = match visit(m, None) {
                Walk::Read => true,
                Walk::Skip => false,
                Walk::Stop => return Ok(()),
            };
        }
        if !reading {
            continue;
        }
        let ext = ext.to_ascii_lowercase();
        if ext == label_key.member() {
            let mut s = String::new();
            entry.read_to_string(&mut s).map_err(|e| format!("read {name}: {e}"))?;
            label = Some(s);
        } else if image.is_none() && IMG_EXTENSIONS.contains(&ext.as_str()) {
            let mut buf = Vec::with_capacity(entry.header().size().unwrap_or(0) as usize);
            entry.read_to_end(&mut buf).map_err(|e| format!("read {name}: {e}"))?;
            image = Some(buf);
        }
    }
    if reading {
        if let Walk::Stop = visit(member.unwrap_or(0), Some(finish(&mut image, &mut label))) {
            return Ok(());
        }
    }
    Ok(())
}
