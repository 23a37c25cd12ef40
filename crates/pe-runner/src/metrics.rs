//! `metrics.jsonl`: one JSON object per logged event, for scripts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub struct MetricsLog {
    file: File,
}

impl MetricsLog {
    /// Appends to `path` (a resumed run continues the same file).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { file: OpenOptions::new().create(true).append(true).open(path)? })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> io::Result<()> {
        writeln!(self.file, "{record}")?;
        self.file.flush()
    }

    /// Makes every written record durable (fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
