//! `--predictions FILE`: every evaluated image with its label and top-k classes and probabilities,
//! as CSV (`.csv`) or JSON lines (`.jsonl`): what error analysis and ensembling start from. The file
//! is written beside its final name and renamed when the evaluation ends, so an interrupted
//! evaluation leaves no partial file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::eval::per_class::csv_field;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

/// Which evaluation a row belongs to (several checkpoints, sizes and crops share one file).
pub struct RowContext<'a> {
    pub source: &'a str,
    pub img_size: usize,
    pub crop_pct: f64,
}

/// One image's row.
pub struct Row<'a> {
    pub file: &'a Path,
    pub label: &'a str,
    pub label_index: i64,
    /// Class names and probabilities, best first.
    pub top: &'a [(&'a str, i64, f32)],
}

pub struct PredictionsWriter {
    out: BufWriter<File>,
    partial: PathBuf,
    path: PathBuf,
    format: Format,
    top_k: usize,
}

impl PredictionsWriter {
    /// Starts `path` for rows of `top_k` classes.
    pub fn create(path: &Path, top_k: usize) -> Result<Self> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("jsonl") => Format::Jsonl,
            _ => bail!("--predictions {}: expected a .csv or .jsonl file name", path.display()),
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut writer =
            PredictionsWriter { out: BufWriter::new(file), partial, path: path.into(), format, top_k };
        if format == Format::Csv {
            let mut header = String::from("source,img_size,crop_pct,file,label,label_index");
            for k in 1..=top_k {
                header += &format!(",class_{k},index_{k},prob_{k}");
            }
            writeln!(writer.out, "{header}")?;
        }
        Ok(writer)
    }

    pub fn write(&mut self, context: &RowContext, row: &Row) -> Result<()> {
        let file = row.file.display().to_string();
        match self.format {
            Format::Csv => {
                let mut line = format!(
                    "{},{},{},{},{},{}",
                    csv_field(context.source),
                    context.img_size,
                    context.crop_pct,
                    csv_field(&file),
                    csv_field(row.label),
                    row.label_index
                );
                for k in 0..self.top_k {
                    match row.top.get(k) {
                        Some((class, index, prob)) => {
                            line += &format!(",{},{index},{prob:.6}", csv_field(class))
                        }
                        None => line += ",,,",
                    }
                }
                writeln!(self.out, "{line}")?;
            }
            Format::Jsonl => {
                let top: Vec<_> = row
                    .top
                    .iter()
                    .map(|(class, index, prob)| json!({"class": class, "index": index, "prob": prob}))
                    .collect();
                let value = json!({
                    "source": context.source,
                    "img_size": context.img_size,
                    "crop_pct": context.crop_pct,
                    "file": file,
                    "label": row.label,
                    "label_index": row.label_index,
                    "top": top,
                });
                writeln!(self.out, "{value}")?;
            }
        }
        Ok(())
    }

    /// Flushes the file to disk and gives it its name.
    pub fn finish(self) -> Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }
}
