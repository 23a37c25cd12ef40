//! `pe info`: which libtorch this process runs on and what devices it can use.

use std::fs;

/// Paths of the libtorch shared objects mapped into this process, as the loader opened them.
fn loaded_libtorch() -> Vec<String> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains("libtorch"))
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The version of the torch wheel a loaded `torch/lib/libtorch*.so` belongs to, from the
/// `version.py` the wheel keeps beside `lib/` (libtorch itself exports no version string).
fn wheel_version(library: &str) -> Option<String> {
    let version_py = std::path::Path::new(library).parent()?.parent()?.join("version.py");
    let text = fs::read_to_string(version_py).ok()?;
    let line = text.lines().find(|line| line.starts_with("__version__"))?;
    Some(line.split('=').nth(1)?.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
}

pub fn run() -> anyhow::Result<()> {
    println!("pe {}", env!("CARGO_PKG_VERSION"));
    let libraries = loaded_libtorch();
    let version = libraries.iter().find_map(|library| wheel_version(library));
    println!("libtorch: {}", version.as_deref().unwrap_or("unknown (not from a torch wheel)"));
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!("threads: {}", tch::get_num_threads());
    for path in libraries {
        println!("loaded: {path}");
    }
    Ok(())
}
