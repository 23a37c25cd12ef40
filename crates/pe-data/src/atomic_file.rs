//! Whole-file writes that readers never see half done: the data, the ImageFolder index cache, the
//! shard index and the runner's run files are all read by other processes (other ranks, a resumed
//! run) while they may be written.

use crate::error::{IoContext, Result};
use std::path::Path;

/// Writes `contents` to `path` through a temporary file beside it, renamed into place: a reader
/// finds the old file, no file, or the whole new one, and a crash never leaves half a file. The
/// temporary name carries the process id, so ranks writing the same file never share one.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = Path::new(&tmp);
    std::fs::write(tmp, contents).io_ctx("write", tmp)?;
    std::fs::rename(tmp, path).io_ctx("rename into", path)
}
