//! WebDataset shards as people already keep them (`data.format = "webdataset"`): tar files written by
//! `webdataset.ShardWriter`, img2dataset or `pe prepare shards`, listed by URL or brace pattern, on a
//! local disk, behind HTTP(S), in S3/GCS/Azure, or produced by a `pipe:` command.
//!
//! They are read by the same streaming [`ShardSet`] as `pe prepare shards` output, so the epoch plan,
//! shuffle buffer, rank split and exact mid-epoch resume are the same: the plan needs only each
//! shard's sample count, which [`counts`] takes from the dataset's own metadata (`_info.json`,
//! `sizes.json`) or from one scan of the shards, cached beside the run.

pub mod counts;
pub mod open;
pub mod retry;
pub mod urls;

use crate::error::{Error, Result};
use crate::shards::ShardSet;
use serde::{Deserialize, Serialize};
use std::path::Path;
pub use urls::ShardUrl;

/// A list of shard URLs or brace patterns; a recipe may give one string or a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct ShardList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for ShardList {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(s) => ShardList(vec![s]),
            OneOrMany::Many(v) => ShardList(v),
        }
    }
}

impl ShardList {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|s| s.trim().is_empty())
    }
}

/// Where a sample's label is: a member holding ASCII digits (`cls`, WebDataset's convention), or an
/// integer field of its `.json` member (`json:FIELD`, timm's `target_key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LabelKey {
    Member(String),
    Json(String),
}

impl Default for LabelKey {
    fn default() -> Self {
        LabelKey::Member("cls".into())
    }
}

impl TryFrom<String> for LabelKey {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let bad =
            || format!("label_key = {s:?}: expected a member extension such as \"cls\", or \"json:FIELD\"");
        match s.strip_prefix("json:") {
            Some(field) if !field.is_empty() => Ok(LabelKey::Json(field.to_string())),
            Some(_) => Err(bad()),
            None if !s.is_empty() && !s.contains(['.', '/']) => Ok(LabelKey::Member(s.to_ascii_lowercase())),
            None => Err(bad()),
        }
    }
}

impl From<LabelKey> for String {
    fn from(k: LabelKey) -> String {
        match k {
            LabelKey::Member(ext) => ext,
            LabelKey::Json(field) => format!("json:{field}"),
        }
    }
}

impl LabelKey {
    /// The member extension that holds the label.
    pub fn member(&self) -> &str {
        match self {
            LabelKey::Member(ext) => ext,
            LabelKey::Json(_) => "json",
        }
    }

    /// The label in that member's text.
    pub fn parse(&self, text: &str) -> std::result::Result<u32, String> {
        match self {
            LabelKey::Member(ext) => text.trim().parse().map_err(|_| format!("bad .{ext} {:?}", text.trim())),
            LabelKey::Json(field) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("bad .json member: {e}"))?;
                match value.get(field) {
                    Some(v) => v
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| format!("json field {field:?} is {v}, not a class index")),
                    None => Err(format!("the .json member has no field {field:?}")),
                }
            }
        }
    }
}

/// The class list of a WebDataset recipe: a count (labels 0..N-1, named by their number) or names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassSpec {
    Count(usize),
    Names(Vec<String>),
}

impl ClassSpec {
    pub fn names(&self) -> Vec<String> {
        match self {
            ClassSpec::Count(n) => numbered(*n),
            ClassSpec::Names(names) => names.clone(),
        }
    }
}

/// Class names `"0"`..`"n-1"`.
pub fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// What opening a WebDataset split needs besides its URLs.
pub struct SplitRequest<'a> {
    /// `data.train_urls` or `data.val_urls`, for messages.
    pub key: &'a str,
    pub specs: &'a ShardList,
    /// Relative shard names are under this folder or URL (`data.root`).
    pub root: &'a Path,
    pub label: &'a LabelKey,
    /// The recipe's `data.classes`.
    pub classes: Option<&'a ClassSpec>,
    /// The run's class list (an evaluation split numbered like its training split).
    pub run_classes: Option<&'a [String]>,
    pub retries: u32,
    /// Where a scan's counts are cached.
    pub cache_dir: &'a Path,
    /// Whether this process scans when nothing gives the counts (rank 0); the other ranks wait
    /// for its cache file (the runs folder is shared by every rank).
    pub scans: bool,
}

/// Open one split: expand its URLs, find its counts, settle its class list.
pub fn open_split(req: &SplitRequest) -> Result<ShardSet> {
    if req.specs.is_empty() {
        return Err(Error::Config(format!(
            "{} is empty: list the shards (e.g. \"train-{{000000..000146}}.tar\") for format = \"webdataset\"",
            req.key
        )));
    }
    let urls = urls::expand_all(&req.specs.0, req.root, req.key)?;
    let found = counts::find(&urls, req)?;
    let classes = match (req.run_classes, req.classes, &found.classes) {
        (Some(run), _, _) => run.to_vec(),
        (None, Some(spec), _) => spec.names(),
        (None, None, Some(names)) => names.clone(),
        (None, None, None) => {
            return Err(Error::Config(format!(
                "{}: {} gives no class count; set data.classes = N (or a list of names)",
                req.key, found.from
            )))
        }
    };
    let location = urls[0].folder().filter(|f| !f.is_empty()).unwrap_or_else(|| urls[0].to_string());
    Ok(ShardSet::from_urls(location.into(), urls, &found.counts, classes, req.label.clone(), req.retries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_parse_members_and_json_fields() {
        let cls = LabelKey::try_from("cls".to_string()).unwrap();
        assert_eq!(cls.parse(" 7\n"), Ok(7));
        assert!(cls.parse("x").unwrap_err().contains(".cls"));
        let json = LabelKey::try_from("json:label".to_string()).unwrap();
        assert_eq!(json.member(), "json");
        assert_eq!(json.parse(r#"{"label": 3, "filename": "a.jpg"}"#), Ok(3));
        assert!(json.parse(r#"{"y": 3}"#).unwrap_err().contains("label"));
        assert!(json.parse(r#"{"label": -1}"#).is_err());
        assert!(LabelKey::try_from("json:".to_string()).is_err());
        assert!(LabelKey::try_from("a.cls".to_string()).is_err());
        assert_eq!(String::from(json), "json:label");
    }
}
