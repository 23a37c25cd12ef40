//! The shard set's index (`index.json`): class list and, per split, each shard's file and sample
//! count. Written last by the writer, so its presence marks a complete shard set.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// File name of the index inside the shard root.
pub const INDEX_FILE: &str = "index.json";
/// The same facts in timm's WebDataset metadata format, so `format = "webdataset"` readers (ours,
/// timm's) need no scan.
pub const INFO_FILE: &str = "_info.json";
const FORMAT: &str = "pe-shards v1";

/// One shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name relative to `<root>/<split>/`.
    pub file: String,
    /// Samples (key groups) in the shard.
    pub samples: usize,
    /// Size in bytes.
    pub bytes: u64,
}

/// The shards of one split, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitShards {
    /// Total samples.
    pub samples: usize,
    /// The shards.
    pub shards: Vec<ShardInfo>,
    /// Classes of the list with no sample in this split.
    #[serde(default)]
    pub missing_classes: Vec<String>,
    /// The split's [`crate::ImageFolder::fingerprint`] when it was written (absent in older sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The whole index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Format tag (`pe-shards v1`).
    pub format: String,
    /// The class list the `.cls` labels index into.
    pub classes: Vec<String>,
    /// Split name -> shards.
    pub splits: BTreeMap<String, SplitShards>,
    /// How the set was written (absent in sets written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_with: Option<WrittenWith>,
}

/// The writer settings a shard set was made with: another request makes another set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenWith {
    pub shard_bytes: u64,
    pub seed: u64,
    pub splits: Vec<String>,
}

impl std::fmt::Display for WrittenWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MB: u64 = 1 << 20;
        match self.shard_bytes {
            bytes if bytes % MB == 0 => write!(f, "{} MB shards", bytes / MB)?,
            bytes => write!(f, "{bytes}-byte shards")?,
        }
        write!(f, ", seed {}, splits {}", self.seed, self.splits.join(", "))
    }
}

impl ShardIndex {
    /// An empty index for `classes`.
    pub fn new(classes: Vec<String>) -> Self {
        ShardIndex { format: FORMAT.into(), classes, splits: BTreeMap::new(), written_with: None }
    }

    /// Read `<root>/index.json`.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(INDEX_FILE);
        if !path.exists() {
            return Err(Error::Format {
                path,
                reason: "no shard index: not a (complete) shard set; run `pe prepare shards`".into(),
            });
        }
        let text = std::fs::read_to_string(&path).io_ctx("read", &path)?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: path.clone(), reason: e.to_string() })?;
        if index.format != FORMAT {
            return Err(Error::Format {
                path,
                reason: format!("format {:?}, expected {FORMAT:?}", index.format),
            });
        }
        Ok(index)
    }

    /// Write `<root>/_info.json` (timm's layout: per split `filenames` relative to the root,
    /// `shard_lengths`, `num_samples`; plus `num_classes` and `classes`) atomically.
    pub fn save_info(&self, root: &Path) -> Result<()> {
        let splits: serde_json::Map<String, serde_json::Value> = self
            .splits
            .iter()
            .map(|(name, split)| {
                let info = serde_json::json!({
                    "name": name,
                    "num_samples": split.samples,
                    "filenames": split.shards.iter().map(|s| format!("{name}/{}", s.file)).collect::<Vec<_>>(),
                    "shard_lengths": split.shards.iter().map(|s| s.samples).collect::<Vec<_>>(),
                });
                (name.clone(), info)
            })
            .collect();
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let info = serde_json::json!({
            "name": name,
            "num_classes": self.classes.len(),
            "classes": self.classes,
            "splits": splits,
        });
        let text = serde_json::to_string_pretty(&info).map_err(|e| Error::Config(e.to_string()))?;
        crate::atomic_file::write(&root.join(INFO_FILE), text)
    }

    /// Write `<root>/index.json` atomically (temporary file, then rename).
    pub fn save(&self, root: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        crate::atomic_file::write(&root.join(INDEX_FILE), text)
    }
}
