//! `<root>/class_names.tsv`, written by `pe prepare imagenet`: each class's human-readable name (the
//! synset's `words`, "tench, Tinca tinca"), for tools that show predictions.
//!
//! One line per class in class-index order (sorted wnids: the training folders' and a run's order),
//! `wnid<TAB>words\n`. A tab, carriage return or newline inside the words is written as a space.

use crate::atomic_file;
use crate::error::{Error, IoContext, Result};
use std::collections::HashSet;
use std::path::Path;

/// The file's name in a prepared folder.
pub const CLASS_NAMES_FILE: &str = "class_names.tsv";

fn bad(path: &Path, reason: String) -> Error {
    Error::Format { path: path.to_path_buf(), reason }
}

/// Writes `(wnid, words)` pairs, in class-index order, to `path` atomically.
pub fn write_class_names(path: &Path, names: &[(String, String)]) -> Result<()> {
    let mut text = String::new();
    for (wnid, words) in names {
        if wnid.is_empty() || wnid.contains(['\t', '\r', '\n']) {
            return Err(bad(path, format!("cannot write the wnid {wnid:?}")));
        }
        text.push_str(wnid);
        text.push('\t');
        text.extend(words.chars().map(|c| if matches!(c, '\t' | '\r' | '\n') { ' ' } else { c }));
        text.push('\n');
    }
    atomic_file::write(path, text)
}

/// Reads the `(wnid, words)` pairs of `path` in file (class-index) order. A line without a tab, with
/// an empty wnid or with a wnid seen before is an error naming the file and the line.
pub fn read_class_names(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).io_ctx("read", path)?;
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |what: &str| bad(path, format!("line {}: {what} in {line:?}", i + 1));
        let (wnid, words) = line.split_once('\t').ok_or_else(|| at("no tab between wnid and words"))?;
        if wnid.is_empty() {
            return Err(at("empty wnid"));
        }
        if !seen.insert(wnid) {
            return Err(at("wnid listed twice"));
        }
        names.push((wnid.to_owned(), words.to_owned()));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(w, n)| (w.to_string(), n.to_string())).collect()
    }

    #[test]
    fn round_trip_with_tabs_and_newlines_in_words_made_spaces() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(CLASS_NAMES_FILE);
        write_class_names(&path, &pairs(&[("n01", "tench, Tinca\ttinca"), ("n02", "a\r\nb"), ("n03", "")]))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "n01\ttench, Tinca tinca\nn02\ta  b\nn03\t\n");
        let back = read_class_names(&path).unwrap();
        assert_eq!(back, pairs(&[("n01", "tench, Tinca tinca"), ("n02", "a  b"), ("n03", "")]));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_file_and_line() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(CLASS_NAMES_FILE);
        for (text, line, what) in [
            ("n01\ttench\nn02 goldfish\n", "line 2", "no tab"),
            ("\ttench\n", "line 1", "empty wnid"),
            ("n01\ta\nn02\tb\nn01\tc\n", "line 3", "twice"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = read_class_names(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(line) && err.contains(what), "{err}");
        }
    }

    #[test]
    fn an_unwritable_wnid_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(CLASS_NAMES_FILE);
        assert!(write_class_names(&path, &pairs(&[("", "x")])).is_err());
        assert!(write_class_names(&path, &pairs(&[("n0\t1", "x")])).is_err());
        assert!(!path.exists());
    }
}
