//! What the benchmark examples share: the photos they time, read into memory once.

/// Every `.jpg`/`.jpeg` below `dir` (sorted, recursively), read into memory.
pub fn collect(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpeg") || e.eq_ignore_ascii_case("jpg"))
        {
            if let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
}
