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

pub fn run() -> anyhow::Result<()> {
    println!("pe {}", env!("CARGO_PKG_VERSION"));
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!("threads: {}", tch::get_num_threads());
    for path in loaded_libtorch() {
        println!("loaded: {path}");
    }
    Ok(())
}
