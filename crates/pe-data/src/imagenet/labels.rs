//! ImageNet's class list and validation labels, from the official devkit or Kaggle's CSV files.
//!
//! Devkit (`ILSVRC2012_devkit_t12.tar.gz`): `data/meta.mat` holds the `synsets` struct array; the
//! 1,000 leaf synsets (`num_children == 0`) carry `ILSVRC2012_ID` 1..1000 and their `WNID`;
//! `data/ILSVRC2012_validation_ground_truth.txt` gives, line i, the ILSVRC2012_ID of
//! `ILSVRC2012_val_{i:08}.JPEG` (torchvision's `parse_devkit_archive`). Kaggle: `LOC_synset_mapping.txt`
//! (`wnid words` per line) and `LOC_val_solution.csv` (`ImageId,PredictionString`, the first token of
//! the prediction string being the wnid). `meta.mat` is read with the `matrw` crate (pure Rust, MAT
//! v5/v7 with structs, which `matfile` does not read).

use crate::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Classes and validation labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Class wnids in ILSVRC2012_ID (devkit) or file (Kaggle) order.
    pub wnids: Vec<String>,
    /// Validation file name (`ILSVRC2012_val_00000001.JPEG`) -> wnid.
    pub val: HashMap<String, String>,
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
    let wnids = leaf_wnids(&meta).map_err(|e| format_err(path, format!("meta.mat: {e}")))?;
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
    Ok(Labels { wnids, val })
}

/// A numeric scalar of any stored type (MATLAB writes doubles, scipy may write integers).
fn number(v: &matrw::MatVariable) -> Option<f64> {
    v.to_f64()
        .or_else(|| v.to_i64().map(|x| x as f64))
        .or_else(|| v.to_i32().map(f64::from))
        .or_else(|| v.to_u16().map(f64::from))
        .or_else(|| v.to_u8().map(f64::from))
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

/// The leaf synsets of `meta.mat`, placed at index `ILSVRC2012_ID - 1`.
fn leaf_wnids(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    let mat = matrw::load_matfile_from_u8(&canonical_header(bytes)).map_err(|e| format!("{e:?}"))?;
    let synsets = &mat["synsets"];
    let n: usize = synsets.dim().iter().product();
    if n == 0 {
        return Err("no `synsets` struct array".into());
    }
    let mut leaves: Vec<(usize, String)> = Vec::new();
    for i in 0..n {
        let s = &synsets[i];
        let children = number(&s["num_children"]).ok_or(format!("synset {i}: no num_children"))?;
        if children != 0.0 {
            continue;
        }
        let id = number(&s["ILSVRC2012_ID"]).ok_or(format!("synset {i}: no ILSVRC2012_ID"))? as usize;
        let wnid: String =
            s["WNID"].to_vec_char().ok_or(format!("synset {i}: no WNID"))?.into_iter().collect();
        leaves.push((id, wnid));
    }
    leaves.sort();
    if leaves.iter().enumerate().any(|(k, (id, _))| *id != k + 1) {
        return Err("leaf ILSVRC2012_IDs are not 1..=n".into());
    }
    Ok(leaves.into_iter().map(|(_, w)| w).collect())
}

/// Read Kaggle's `LOC_synset_mapping.txt` and `LOC_val_solution.csv` in `dir`.
pub fn from_kaggle(dir: &Path) -> Result<Labels> {
    let mapping = dir.join("LOC_synset_mapping.txt");
    let text = std::fs::read_to_string(&mapping).io_ctx("read", &mapping)?;
    let wnids: Vec<String> =
        text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
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
    Ok(Labels { wnids, val })
}
