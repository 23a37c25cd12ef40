//! `metrics.jsonl`: one JSON object per logged event, for scripts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

/// What of an existing metrics.jsonl a start keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: the run starts over.
    Nothing,
    /// The first bytes, up to where the checkpoint it resumes from said the log ended.
    Bytes(u64),
    /// The lines of steps up to this one (a checkpoint from before the log's length was kept).
    UpToStep(u64),
}

impl MetricsLog {
    /// Appends to `path` (a resumed run continues the same file) after cutting it back to `keep`.
    /// A line that a killed run left half-written is cut first, so every line a reader sees is a
    /// whole JSON object.
    pub fn open(path: &Path, keep: Keep) -> io::Result<Self> {
        Self::open_cut(path, keep).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn open_cut(path: &Path, keep: Keep) -> io::Result<Self> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let whole = whole_lines_len(&mut file)?;
        let kept = match keep {
            Keep::Nothing => 0,
            Keep::Bytes(bytes) => whole.min(bytes),
            Keep::UpToStep(step) => {
                let mut text = String::new();
                file.seek(SeekFrom::Start(0))?;
                file.read_to_string(&mut text)?;
                let lines: String = text[..whole as usize]
                    .split_inclusive('\n')
                    .filter(|line| step_of(line).is_none_or(|s| s <= step))
                    .collect();
                if lines.len() as u64 != whole {
                    pe_data::atomic_file::write(path, &lines).map_err(io::Error::other)?;
                    file = OpenOptions::new().read(true).append(true).open(path)?;
                }
                lines.len() as u64
            }
        };
        if kept < file.metadata()?.len() {
            file.set_len(kept)?;
        }
        Ok(Self { path: path.to_owned(), file })
    }

    /// One `write` per record: a reader following the file never sees part of a line
    /// (`writeln!` on a `Value` would issue one write per token).
    pub fn write(&mut self, record: &serde_json::Value) -> io::Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| self.located(e))
    }

    /// Makes every written record durable (fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data().map_err(|e| self.located(e))
    }

    /// The file's length: every record written so far.
    pub fn bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata().map_err(|e| self.located(e))?.len())
    }

    fn located(&self, error: io::Error) -> io::Error {
        io::Error::new(error.kind(), format!("{}: {error}", self.path.display()))
    }
}

/// The `"step"` of a record line.
fn step_of(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("step")?.as_u64()
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
        let mut log = MetricsLog::open(&path, Keep::Bytes(u64::MAX)).unwrap();
        log.write(&serde_json::json!({"step": 3})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
    }

    #[test]
    fn a_file_without_any_newline_starts_over_and_whole_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, "{\"st").unwrap();
        MetricsLog::open(&torn, Keep::Bytes(u64::MAX)).unwrap();
        assert_eq!(std::fs::read_to_string(&torn).unwrap(), "");
        let whole = dir.path().join("whole.jsonl");
        let text = "{\"step\":1}\n".repeat(1000);
        std::fs::write(&whole, &text).unwrap();
        MetricsLog::open(&whole, Keep::Bytes(u64::MAX)).unwrap();
        assert_eq!(std::fs::read_to_string(&whole).unwrap(), text);
    }

    #[test]
    fn a_resume_keeps_the_log_up_to_its_checkpoint_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let upto_2 = "{\"step\":1}\n{\"step\":2}\n";
        let text = format!("{upto_2}{{\"step\":3}}\n");
        std::fs::write(&path, &text).unwrap();
        MetricsLog::open(&path, Keep::Bytes(upto_2.len() as u64)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), upto_2);
        // An old checkpoint (no length kept): lines of later steps go, even among earlier ones
        // (an earlier version's resume appended steps 2 and 3 again).
        std::fs::write(&path, format!("{text}{{\"step\":2}}\n{{\"step\":3}}\n{{\"type\":\"x\"}}\n")).unwrap();
        let mut log = MetricsLog::open(&path, Keep::UpToStep(2)).unwrap();
        log.write(&serde_json::json!({"step": 3})).unwrap();
        let expected = format!("{upto_2}{{\"step\":2}}\n{{\"type\":\"x\"}}\n{{\"step\":3}}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        MetricsLog::open(&path, Keep::Nothing).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
