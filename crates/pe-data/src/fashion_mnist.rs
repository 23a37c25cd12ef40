//! `pe prepare fashion-mnist`: Debian's Fashion-MNIST IDX files → an ImageFolder of JPEG files.
//!
//! Reads `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (the `dataset-fashion-mnist` package puts
//! them in `/usr/share/datasets/fashion-mnist`) and writes `<to>/train/<k>_<name>/<i>.jpg` (60,000) and
//! `<to>/val/...` (10,000) as 28x28 grayscale JPEGs (quality 95). Folder names start with the label
//! digit so that ImageFolder's sorted class order is the data set's label order. This is the small
//! real data set that exercises the exact ImageNet code path (JPEG decode, crops, loader) on a CPU.
//!
//! Idempotent and restartable: each file is written to a temporary name and renamed, so a file that
//! exists is complete; a rerun after an interruption writes only the missing files; a `.prepared`
//! marker written last makes a complete rerun a no-op.

use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Class folder names in label order (torchvision's names with `/` replaced, prefixed by the label).
pub const CLASSES: [&str; 10] = [
    "0_T-shirt_top",
    "1_Trouser",
    "2_Pullover",
    "3_Dress",
    "4_Coat",
    "5_Sandal",
    "6_Shirt",
    "7_Sneaker",
    "8_Bag",
    "9_Ankle_boot",
];

/// Debian's install location.
pub const DEFAULT_FROM: &str = "/usr/share/datasets/fashion-mnist";

const MARKER: &str = ".prepared";
const JPEG_QUALITY: u8 = 95;

/// What `prepare` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Output root.
    pub root: PathBuf,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Files written in this call.
    pub written: usize,
    /// Files found complete from an earlier (interrupted) run.
    pub reused: usize,
    /// True when the marker said everything was already done.
    pub already_complete: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_complete {
            write!(f, "{}: already prepared ({} train / {} val)", self.root.display(), self.train, self.val)
        } else {
            write!(
                f,
                "{}: {} train / {} val images ({} written, {} reused from an earlier run)",
                self.root.display(),
                self.train,
                self.val,
                self.written,
                self.reused
            )
        }
    }
}

/// An IDX array: dimensions and raw u8 data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimension sizes.
    pub dims: Vec<usize>,
    /// Row-major u8 data.
    pub data: Vec<u8>,
}

/// Find `stem` or `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(Error::MissingSource { path: gz, what: IDX_SOURCE })
    }
}

/// What `--from` must hold, and where it comes from.
const IDX_SOURCE: &str = "Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz, ...), which Debian's \
                          `dataset-fashion-mnist` package installs in /usr/share/datasets/fashion-mnist \
                          (`make data` installs it and runs this)";

/// Read an unsigned-byte IDX file (gzip-compressed when it ends in `.gz`).
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).io_ctx("read", path)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).io_ctx("gunzip", path)?;
        out
    } else {
        raw
    };
    let bad = |reason: String| Error::Format { path: path.to_path_buf(), reason };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("IDX element type 0x{:02x}, expected 0x08 (unsigned byte)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated IDX header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]])
                as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(bad(format!(
            "IDX dims {dims:?} need {} data bytes, file has {}",
            n,
            bytes.len() - header
        )));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

fn read_split(from: &Path, prefix: &str) -> Result<(Idx, Idx)> {
    let images = read_idx(&find(from, &format!("{prefix}-images-idx3-ubyte"))?)?;
    let labels = read_idx(&find(from, &format!("{prefix}-labels-idx1-ubyte"))?)?;
    if images.dims.len() != 3 || labels.dims.len() != 1 || images.dims[0] != labels.dims[0] {
        return Err(Error::Format {
            path: from.join(prefix),
            reason: format!("images {:?} and labels {:?} do not match", images.dims, labels.dims),
        });
    }
    if let Some(&l) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
        return Err(Error::Format { path: from.join(prefix), reason: format!("label {l} is not in 0..10") });
    }
    Ok((images, labels))
}

/// Write one split; returns (written, reused).
fn write_split(images: &Idx, labels: &Idx, dir: &Path) -> Result<(usize, usize)> {
    for c in CLASSES {
        let d = dir.join(c);
        std::fs::create_dir_all(&d).io_ctx("create directory", &d)?;
    }
    let (rows, cols) = (images.dims[1], images.dims[2]);
    let per = rows * cols;
    let results: Vec<Result<bool>> = (0..labels.data.len())
        .into_par_iter()
        .map(|i| {
            let path = dir.join(CLASSES[labels.data[i] as usize]).join(format!("{i:05}.jpg"));
            if path.is_file() {
                return Ok(false);
            }
            let mut buf = Vec::new();
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY);
            let pixels = &images.data[i * per..(i + 1) * per];
            image::ImageEncoder::write_image(
                enc,
                pixels,
                cols as u32,
                rows as u32,
                image::ExtendedColorType::L8,
            )
            .map_err(|e| Error::Format { path: path.clone(), reason: format!("JPEG encode: {e}") })?;
            let tmp = path.with_extension("jpg.tmp");
            std::fs::write(&tmp, &buf).io_ctx("write", &tmp)?;
            std::fs::rename(&tmp, &path).io_ctx("rename into", &path)?;
            Ok(true)
        })
        .collect();
    let (mut written, mut reused) = (0, 0);
    for r in results {
        if r? {
            written += 1;
        } else {
            reused += 1;
        }
    }
    Ok((written, reused))
}

/// Convert the IDX files in `from` into an ImageFolder at `to` (idempotent, restartable).
pub fn prepare(from: &Path, to: &Path) -> Result<Summary> {
    if !from.is_dir() {
        return Err(Error::MissingSource { path: from.to_path_buf(), what: IDX_SOURCE });
    }
    let (train_images, train_labels) = read_split(from, "train")?;
    let (val_images, val_labels) = read_split(from, "t10k")?;
    let (train, val) = (train_labels.data.len(), val_labels.data.len());
    let marker_text = format!("fashion-mnist {train} {val} q{JPEG_QUALITY}\n");
    let marker = to.join(MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == marker_text) {
        return Ok(Summary {
            root: to.to_path_buf(),
            train,
            val,
            written: 0,
            reused: 0,
            already_complete: true,
        });
    }
    std::fs::create_dir_all(to).io_ctx("create directory", to)?;
    let (w1, r1) = write_split(&train_images, &train_labels, &to.join("train"))?;
    let (w2, r2) = write_split(&val_images, &val_labels, &to.join("val"))?;
    std::fs::write(&marker, marker_text).io_ctx("write", &marker)?;
    Ok(Summary {
        root: to.to_path_buf(),
        train,
        val,
        written: w1 + w2,
        reused: r1 + r2,
        already_complete: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{ImageFolder, IndexCache};
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn write(path: &Path, bytes: &[u8], gz: bool) {
        if gz {
            let f = std::fs::File::create(path).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// A tiny Fashion-MNIST: image i is a flat gray of value 20 * i (so pixels are checkable).
    fn fake(dir: &Path, n_train: usize, n_val: usize) {
        for (prefix, n, gz) in [("train", n_train, true), ("t10k", n_val, false)] {
            let imgs: Vec<u8> = (0..n).flat_map(|i| vec![(20 * i) as u8; 28 * 28]).collect();
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            let sfx = if gz { ".gz" } else { "" };
            write(
                &dir.join(format!("{prefix}-images-idx3-ubyte{sfx}")),
                &idx_bytes(&[n as u32, 28, 28], &imgs),
                gz,
            );
            write(
                &dir.join(format!("{prefix}-labels-idx1-ubyte{sfx}")),
                &idx_bytes(&[n as u32], &labels),
                gz,
            );
        }
    }

    #[test]
    fn prepares_an_image_folder_with_labels_in_order() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("idx"), t.path().join("out"));
        std::fs::create_dir_all(&from).unwrap();
        fake(&from, 12, 5);
        let s = prepare(&from, &to).unwrap();
        assert_eq!((s.train, s.val, s.written, s.reused, s.already_complete), (12, 5, 17, 0, false));
        let train = ImageFolder::open(&to, "train", IndexCache::Off).unwrap();
        assert_eq!(train.classes, CLASSES.to_vec());
        assert_eq!(train.len(), 12);
        // Image 11 (label 1, gray 220) is in class folder 1 and decodes to ~220 in all channels.
        let (path, label) = train.samples.iter().find(|(p, _)| p.ends_with("00011.jpg")).unwrap();
        assert_eq!(*label, 1);
        let img = image::open(path).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (28, 28));
        assert!(img.pixels().all(|p| p.0[0].abs_diff(220) <= 2));
        // Val has 5 images in classes 0..4; ImageFolder needs every class non-empty, so check files.
        assert_eq!(std::fs::read_dir(to.join("val/4_Coat")).unwrap().count(), 1);
    }

    #[test]
    fn rerun_is_a_no_op_and_a_partial_run_is_completed() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("idx"), t.path().join("out"));
        std::fs::create_dir_all(&from).unwrap();
        fake(&from, 20, 10);
        prepare(&from, &to).unwrap();
        assert!(prepare(&from, &to).unwrap().already_complete);
        // Simulate an interrupted run: no marker, two files missing.
        std::fs::remove_file(to.join(MARKER)).unwrap();
        std::fs::remove_file(to.join("train/3_Dress/00013.jpg")).unwrap();
        std::fs::remove_file(to.join("val/0_T-shirt_top/00000.jpg")).unwrap();
        let s = prepare(&from, &to).unwrap();
        assert_eq!((s.written, s.reused, s.already_complete), (2, 28, false));
        assert!(to.join("train/3_Dress/00013.jpg").is_file());
        assert!(prepare(&from, &to).unwrap().already_complete);
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let t = tempfile::tempdir().unwrap();
        let err = prepare(&t.path().join("nope"), t.path()).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("dataset-fashion-mnist"), "{err}");
        assert!(!err.contains("data.root"), "not the hint for a missing training folder: {err}");
        let from = t.path().join("idx");
        std::fs::create_dir_all(&from).unwrap();
        fake(&from, 3, 2);
        std::fs::write(from.join("t10k-labels-idx1-ubyte"), b"\x00\x00\x08\x01\x00\x00\x00\x09ab").unwrap();
        let err = prepare(&from, &t.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
        let err = read_idx(&from.join("t10k-labels-idx1-ubyte")).unwrap_err();
        assert!(err.to_string().contains("need 9 data bytes"), "{err}");
    }
}
