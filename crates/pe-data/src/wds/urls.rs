//! Shard lists as WebDataset writes them: brace patterns (`train-{0000..0146}.tar`, `{a,b}`), several
//! patterns joined by `::`, and the places a shard can be: a local path, `file://`, `http(s)://`,
//! `s3://`, `gs://`, `az://` and `pipe:COMMAND`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where one shard is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardUrl {
    /// A file on this machine.
    Local(PathBuf),
    /// An object in a store `object_store` reaches (S3, GCS, Azure, HTTP(S)).
    Remote(url::Url),
    /// The standard output of a shell command (WebDataset's `pipe:`).
    Pipe(String),
}

impl std::fmt::Display for ShardUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardUrl::Local(path) => write!(f, "{}", path.display()),
            ShardUrl::Remote(url) => write!(f, "{url}"),
            ShardUrl::Pipe(command) => write!(f, "pipe:{command}"),
        }
    }
}

/// URL schemes read through `object_store`.
const REMOTE_SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "azure", "abfs", "http", "https"];

impl ShardUrl {
    /// Parse one shard location; a relative path is taken relative to `root` (a folder or a URL).
    pub fn parse(text: &str, root: &str) -> Result<Self> {
        if let Some(command) = text.strip_prefix("pipe:") {
            return Ok(ShardUrl::Pipe(command.to_string()));
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(ShardUrl::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                return Err(Error::Config(format!(
                    "shard {text:?}: unknown scheme {scheme:?} (expected a path, file://, http(s)://, s3://, \
                     gs://, az:// or pipe:COMMAND)"
                )));
            }
            let url = url::Url::parse(text).map_err(|e| Error::Config(format!("shard URL {text:?}: {e}")))?;
            return Ok(ShardUrl::Remote(url));
        }
        if Path::new(text).is_absolute() || root.is_empty() {
            return Ok(ShardUrl::Local(PathBuf::from(text)));
        }
        if root.contains("://") || root.starts_with("pipe:") {
            return Self::parse(&format!("{}/{text}", root.trim_end_matches('/')), "");
        }
        Ok(ShardUrl::Local(Path::new(root).join(text)))
    }

    /// The folder this shard is in, ending in `/` (empty for a bare file name; `None` for a `pipe:`).
    pub fn folder(&self) -> Option<String> {
        match self {
            ShardUrl::Local(path) => Some(match path.parent().map(|p| p.to_string_lossy()) {
                Some(parent) if !parent.is_empty() => format!("{}/", parent.trim_end_matches('/')),
                _ => String::new(),
            }),
            ShardUrl::Remote(url) => url.join("./").ok().map(|u| u.to_string()),
            ShardUrl::Pipe(_) => None,
        }
    }

    /// This shard's name relative to `base` (a folder location ending in `/`), if it lies under it.
    pub fn relative_to(&self, base: &str) -> Option<String> {
        self.to_string().strip_prefix(base).map(str::to_string)
    }
}

/// Every shard of `specs` (each a brace pattern, or several joined by `::`), in order, relative
/// paths under `root`. `key` names the setting for errors.
pub fn expand_all(specs: &[String], root: &Path, key: &str) -> Result<Vec<ShardUrl>> {
    let root = root.to_string_lossy();
    let mut out = Vec::new();
    for spec in specs {
        for pattern in spec.split("::").filter(|p| !p.trim().is_empty()) {
            let expanded = expand_braces(pattern.trim()).map_err(|e| Error::Config(format!("{key}: {e}")))?;
            for text in expanded {
                out.push(ShardUrl::parse(&text, &root)?);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!(
            "{key} lists no shard: give a list of shard URLs or a brace pattern such as \
             \"train-{{000000..000146}}.tar\" (format = \"webdataset\")"
        )));
    }
    Ok(out)
}

/// Bash-style brace expansion as WebDataset's `braceexpand`: `{a,b}` alternatives and `{00..10}`
/// numeric ranges (zero-padded to the wider bound when either bound is), nested and repeated.
pub fn expand_braces(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("unmatched '}}' in {pattern:?}"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = matching_close(pattern, open).ok_or_else(|| format!("unmatched '{{' in {pattern:?}"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let alternatives = match range(body)? {
        Some(values) => values,
        None => split_top_level(body).into_iter().map(expand_braces).collect::<Result<Vec<_>, _>>()?.concat(),
    };
    let tails = expand_braces(tail)?;
    Ok(alternatives.iter().flat_map(|a| tails.iter().map(move |t| format!("{head}{a}{t}"))).collect())
}

fn matching_close(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices().skip_while(|&(i, _)| i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_top_level(body: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

/// `lo..hi` of non-negative integers, both ends included, descending when `lo > hi`.
fn range(body: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let Some((lo, hi)) = body.split_once("..") else { return Ok(None) };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(lo) || !digits(hi) {
        return Ok(None);
    }
    let parse = |s: &str| s.parse::<u64>().map_err(|e| format!("range {{{body}}}: {e}"));
    let (a, b) = (parse(lo)?, parse(hi)?);
    let padded = lo.starts_with('0') && lo.len() > 1 || hi.starts_with('0') && hi.len() > 1;
    let width = if padded { lo.len().max(hi.len()) } else { 0 };
    if a.abs_diff(b) > 10_000_000 {
        return Err(format!("range {{{body}}} is too long"));
    }
    let values: Vec<u64> = if a <= b { (a..=b).collect() } else { (b..=a).rev().collect() };
    Ok(Some(values.into_iter().map(|v| format!("{v:0width$}")).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_like_webdatasets_braceexpand() {
        assert_eq!(expand_braces("a-{0..2}.tar").unwrap(), ["a-0.tar", "a-1.tar", "a-2.tar"]);
        assert_eq!(expand_braces("s-{0008..0010}.tar").unwrap(), ["s-0008.tar", "s-0009.tar", "s-0010.tar"]);
        assert_eq!(expand_braces("{x,y}/{1..2}").unwrap(), ["x/1", "x/2", "y/1", "y/2"]);
        assert_eq!(expand_braces("{a,b{1..2}}").unwrap(), ["a", "b1", "b2"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("bad-{0..2.tar").unwrap_err().contains("unmatched"));
    }

    #[test]
    fn locations_parse_with_the_root_for_relative_names() {
        let root = Path::new("s3://bucket/wds");
        let urls = expand_all(&["train-{0..1}.tar::pipe:cat x.tar".into()], root, "data.train_urls").unwrap();
        assert_eq!(urls[0].to_string(), "s3://bucket/wds/train-0.tar");
        assert_eq!(urls[2], ShardUrl::Pipe("cat x.tar".into()));
        assert_eq!(ShardUrl::parse("x.tar", "/data").unwrap(), ShardUrl::Local("/data/x.tar".into()));
        assert_eq!(ShardUrl::parse("file:///d/x.tar", "").unwrap(), ShardUrl::Local("/d/x.tar".into()));
        let e = ShardUrl::parse("ftp://h/x.tar", "").unwrap_err().to_string();
        assert!(e.contains("ftp"), "{e}");
        assert_eq!(urls[0].folder().unwrap(), "s3://bucket/wds/");
        assert_eq!(ShardUrl::parse("/d/x.tar", "").unwrap().folder().unwrap(), "/d/");
        assert_eq!(ShardUrl::parse("x.tar", "").unwrap().folder().unwrap(), "");
        assert!(expand_all(&[], root, "data.val_urls").unwrap_err().to_string().contains("data.val_urls"));
    }
}
