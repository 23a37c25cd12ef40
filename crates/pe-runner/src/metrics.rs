//! `metrics.jsonl`: one JSON object per logged event, for scripts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

pub struct MetricsLog {
    file: File,
}

impl MetricsLog {
    /// Appends to `path` (a resumed run continues the same file). A line that a killed run left
    /// half-written is cut first, so every line a reader sees is a whole JSON object.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let whole = whole_lines_len(&mut file)?;
        if whole < file.metadata()?.len() {
            file.set_len(whole)?;
        }
        Ok(Self { file })
    }

    /// One `write` per record: a reader following the file never sees part of a line
    /// (`writeln!` on a `Value` would issue one write per token).
    pub fn write(&mut self, record: &serde_json::Value) -> io::Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())
    }

    /// Makes every written record durable (fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Length of the file up to and including its last newline.
fn whole_lines_len(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_by_a_kill_is_dropped_when_the_run_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        let mut log = MetricsLog::open(&path).unwrap();
        log.write(&serde_json::json!({"step": 3})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
    }

    #[test]
    fn a_file_without_any_newline_starts_over_and_whole_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, "{\"st").unwrap();
        MetricsLog::open(&torn).unwrap();
        assert_eq!(std::fs::read_to_string(&torn).unwrap(), "");
        let whole = dir.path().join("whole.jsonl");
        let text = "{\"step\":1}\n".repeat(1000);
        std::fs::write(&whole, &text).unwrap();
        MetricsLog::open(&whole).unwrap();
        assert_eq!(std::fs::read_to_string(&whole).unwrap(), text);
    }
}
