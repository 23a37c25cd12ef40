//! ImageNet's class list and validation labels, from the official devkit or Kaggle's CSV files.
//!
//! Devkit (`ILSVRC2012_devkit_t12.tar.gz`): `data/meta.mat` holds the `synsets` struct array; the
//! 1,000 leaf synsets (`num_children == 0`) carry `ILSVRC2012_ID` 1..1000, their `WNID` and `words`;
//! `data/ILSVRC2012_validation_ground_truth.txt` gives, line i, the ILSVRC2012_ID of
//! `ILSVRC2012_val_{i:08}.JPEG` (torchvision's `parse_devkit_archive`). Kaggle: `LOC_synset_mapping.txt`
//! (`wnid words...` per line, the words being all after the first space) and `LOC_val_solution.csv`
//! (`ImageId,PredictionString`, the first token of the prediction string being the wnid). `meta.mat` is
//! read with the `matrw` crate (pure Rust, MAT v5/v7 with structs, which `matfile` does not read).

use crate::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Classes and validation labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Class wnids in ILSVRC2012_ID (devkit) or file (Kaggle) order.
    pub wnids: Vec<String>,
    /// Each class's human-readable name ("tench, Tinca tinca"), in the order of `wnids`.
    pub words: Vec<String>,
    /// Validation file name (`ILSVRC2012_val_00000001.JPEG`) -> wnid.
    pub val: HashMap<String, String>,
}

impl Labels {
    /// `(wnid, words)` sorted by wnid: class-index order, as in [`super::CLASS_NAMES_FILE`].
    pub fn class_names(&self) -> Vec<(String, String)> {
        let mut names: Vec<_> = self.wnids.iter().cloned().zip(self.words.iter().cloned()).collect();
        names.sort();
        names
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format { path: path.to_path_buf(), reason: reason.into() }
}

/// Read the devkit archive (`.tar.gz`).
pub fn from_devkit(path: &Path) -> Result<Labels> {
    let file = std::fs::File::open(path).io_ctx("open", path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let (mut meta, mut truth) = (None, None);
    for entry in archive.entries().io_ctx("read", path)? {
        let mut entry = entry.io_ctx("read", path)?;
        let name = entry.path().io_ctx("read", path)?.to_string_lossy().into_owned();
        if name.ends_with("data/meta.mat") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).io_ctx("read", path)?;
            meta = Some(buf);
        } else if name.ends_with("data/ILSVRC2012_validation_ground_truth.txt") {
            let mut s = String::new();
            entry.read_to_string(&mut s).io_ctx("read", path)?;
            truth = Some(s);
        }
    }
    let meta = meta.ok_or_else(|| format_err(path, "no data/meta.mat in the devkit"))?;
    let truth = truth.ok_or_else(|| format_err(path, "no data/ILSVRC2012_validation_ground_truth.txt"))?;
    let (wnids, words) = leaf_synsets(&meta).map_err(|e| format_err(path, format!("meta.mat: {e}")))?;
    let mut val = HashMap::new();
    for (i, line) in truth.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let id: usize = line
            .trim()
            .parse()
            .map_err(|_| format_err(path, format!("ground truth line {}: {line:?}", i + 1)))?;
        let wnid = wnids.get(id.wrapping_sub(1)).ok_or_else(|| {
            format_err(path, format!("ground truth line {}: ILSVRC2012_ID {id} is not a class", i + 1))
        })?;
        val.insert(format!("ILSVRC2012_val_{:08}.JPEG", i + 1), wnid.clone());
    }
    Ok(Labels { wnids, words, val })
}

/// The scalar in a numeric field, of any stored class: MATLAB writes doubles, a re-save from numpy or
/// scipy may write int64 or uint8. Matched on the stored class because matrw's typed getters
/// (`to_f64`, ...) panic on another class or an empty array instead of returning `None`.
fn number(v: &matrw::MatVariable) -> Option<f64> {
    use matrw::MatlabType as T;
    let matrw::MatVariable::NumericArray(array) = v else { return None };
    let value = match &array.value {
        T::U8(x) => f64::from(*x.first()?),
        T::I8(x) => f64::from(*x.first()?),
        T::U16(x) => f64::from(*x.first()?),
        T::I16(x) => f64::from(*x.first()?),
        T::U32(x) => f64::from(*x.first()?),
        T::I32(x) => f64::from(*x.first()?),
        T::U64(x) => *x.first()? as f64,
        T::I64(x) => *x.first()? as f64,
        T::F32(x) => f64::from(*x.first()?),
        T::F64(x) => *x.first()?,
        T::BOOL(x) => f64::from(u8::from(*x.first()?)),
        T::UTF8(_) | T::UTF16(_) => return None,
    };
    (array.dim.iter().product::<usize>() == 1).then_some(value)
}

/// The text in a char field, whichever encoding it was stored in.
fn text(v: &matrw::MatVariable) -> Option<String> {
    use matrw::MatlabType as T;
    match v {
        matrw::MatVariable::NumericArray(array) => match &array.value {
            T::UTF8(chars) | T::UTF16(chars) => Some(chars.iter().collect()),
            _ => None,
        },
        _ => None,
    }
}

/// The first 116 bytes of a level-5 MAT-file are free descriptive text. MATLAB writes
/// `MATLAB 5.0 MAT-file, Platform: ...` (so does the devkit), scipy `MATLAB 5.0 MAT-file Platform: ...`;
/// matrw accepts only the former, so the text is rewritten to it. The binary part is untouched.
fn canonical_header(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const TEXT: usize = 116;
    const START: &[u8] = b"MATLAB 5.0 MAT-file";
    if bytes.len() < 128 || !bytes.starts_with(START) || bytes[START.len()] == b',' {
        return bytes.into();
    }
    let mut fixed = bytes.to_vec();
    let canonical = b"MATLAB 5.0 MAT-file, ";
    fixed[..TEXT].fill(b' ');
    fixed[..canonical.len()].copy_from_slice(canonical);
    fixed.into()
}

/// Checks that a level-5 MAT-file's top-level elements (8-byte tag: type, byte count; data padded
/// to 8 bytes) fit in the file, and that a compressed element inflates to a whole element: matrw
/// panics on a cut file instead of returning an error.
fn check_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    const HEADER: usize = 128;
    const COMPRESSED: u32 = 15;
    if bytes.len() < HEADER {
        return Err(format!("{} bytes: shorter than a MAT-file header (128 bytes)", bytes.len()));
    }
    let tag = |at: &[u8]| -> (u32, usize) {
        let word = |i: usize| u32::from_le_bytes([at[i], at[i + 1], at[i + 2], at[i + 3]]);
        (word(0), word(4) as usize)
    };
    let mut at = HEADER;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 8 {
            return Err(format!("the file ends inside an element tag at byte {at} (truncated?)"));
        }
        let (kind, size) = tag(rest);
        if rest.len() - 8 < size {
            return Err(format!(
                "the element at byte {at} declares {size} bytes but only {} remain (truncated?)",
                rest.len() - 8
            ));
        }
        if kind == COMPRESSED {
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(&rest[8..8 + size])
                .read_to_end(&mut inflated)
                .map_err(|e| format!("the compressed element at byte {at} does not inflate: {e}"))?;
            if inflated.len() < 8 || inflated.len() - 8 < tag(&inflated).1 {
                return Err(format!("the compressed element at byte {at} inflates to a cut element"));
            }
            at += 8 + size;
        } else {
            at += 8 + size.div_ceil(8) * 8;
        }
    }
    Ok(())
}

/// Leaf synsets' wnids and words, in two parallel lists.
type Synsets = (Vec<String>, Vec<String>);

/// The wnids and words of `meta.mat`'s leaf synsets, placed at index `ILSVRC2012_ID - 1`.
fn leaf_synsets(bytes: &[u8]) -> std::result::Result<Synsets, String> {
    check_complete(bytes)?;
    let bytes = canonical_header(bytes);
    // A malformed file matrw does not foresee panics inside it; that stays an error of this file.
    let mat = std::panic::catch_unwind(|| matrw::load_matfile_from_u8(&bytes))
        .map_err(|_| "not a MAT-file matrw can read (see the message above)".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let synsets = &mat["synsets"];
    let n: usize = match synsets {
        matrw::MatVariable::StructureArray(_) | matrw::MatVariable::Structure(_) => {
            synsets.dim().iter().product()
        }
        _ => 0,
    };
    if n == 0 {
        return Err("no `synsets` struct array".into());
    }
    let mut leaves: Vec<(usize, String, String)> = Vec::new();
    for i in 0..n {
        let s = match synsets {
            matrw::MatVariable::Structure(_) => synsets,
            _ => &synsets[i],
        };
        let field =
            |name: &str| format!("synset {}: field `{name}` is missing or not a numeric scalar", i + 1);
        let children = number(&s["num_children"]).ok_or_else(|| field("num_children"))?;
        if children != 0.0 {
            continue;
        }
        let id = number(&s["ILSVRC2012_ID"]).ok_or_else(|| field("ILSVRC2012_ID"))?;
        if id < 1.0 || id.fract() != 0.0 {
            return Err(format!("synset {}: ILSVRC2012_ID {id} is not a positive integer", i + 1));
        }
        let text_field = |name: &str| {
            text(&s[name]).ok_or_else(|| format!("synset {}: field `{name}` is missing or not text", i + 1))
        };
        leaves.push((id as usize, text_field("WNID")?, text_field("words")?));
    }
    leaves.sort();
    if leaves.iter().enumerate().any(|(k, (id, ..))| *id != k + 1) {
        return Err("leaf ILSVRC2012_IDs are not 1..=n".into());
    }
    Ok(leaves.into_iter().map(|(_, wnid, words)| (wnid, words)).unzip())
}

/// Read Kaggle's `LOC_synset_mapping.txt` and `LOC_val_solution.csv` in `dir`.
pub fn from_kaggle(dir: &Path) -> Result<Labels> {
    let mapping = dir.join("LOC_synset_mapping.txt");
    let text = std::fs::read_to_string(&mapping).io_ctx("read", &mapping)?;
    let (wnids, words): (Vec<String>, Vec<String>) = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (wnid, words) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (wnid.to_owned(), words.trim_start().to_owned())
        })
        .unzip();
    let solution = dir.join("LOC_val_solution.csv");
    let text = std::fs::read_to_string(&solution).io_ctx("read", &solution)?;
    let mut val = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
        let (id, pred) =
            line.split_once(',').ok_or_else(|| format_err(&solution, format!("line {}: {line:?}", i + 1)))?;
        let wnid = pred
            .split_whitespace()
            .next()
            .ok_or_else(|| format_err(&solution, format!("line {}: no label", i + 1)))?;
        if !wnids.iter().any(|w| w == wnid) {
            return Err(format_err(
                &solution,
                format!("line {}: {wnid} is not in LOC_synset_mapping.txt", i + 1),
            ));
        }
        val.insert(format!("{id}.JPEG"), wnid.to_owned());
    }
    Ok(Labels { wnids, words, val })
}
