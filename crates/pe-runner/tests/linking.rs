//! The `pe` binary links libtorch_cuda (so CUDA works on GPU machines), carries a RUNPATH to the
//! venv's libtorch (so it runs with no LD_LIBRARY_PATH), and LD_LIBRARY_PATH still overrides it.

use std::path::{Path, PathBuf};
use std::process::Command;

const PE: &str = env!("CARGO_BIN_EXE_pe");

fn dynamic_section() -> String {
    let out =
        Command::new("readelf").args(["-d", PE]).output().expect("readelf (binutils) must be installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The directory in the binary's RUNPATH that holds libtorch_cpu.so.
fn runpath_libtorch_dir() -> PathBuf {
    let section = dynamic_section();
    let line = section.lines().find(|l| l.contains("(RUNPATH)")).expect("pe has a RUNPATH (not RPATH)");
    let paths = line.split('[').nth(1).unwrap().trim_end_matches(']');
    paths
        .split(':')
        .map(PathBuf::from)
        .find(|dir| dir.join("libtorch_cpu.so").exists())
        .unwrap_or_else(|| panic!("no RUNPATH entry holds libtorch_cpu.so: {line}"))
}

/// Mirrors `src` into `dst` as links, except along `real_path`, whose directories are recreated
/// (and mirrored in turn); returns the innermost recreated directory.
fn mirror_with_real_dirs(src: &Path, dst: &Path, real_path: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if real_path.first().is_some_and(|name| entry.file_name() == *name) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    match real_path.split_first() {
        Some((name, rest)) => mirror_with_real_dirs(&src.join(name), &dst.join(name), rest),
        None => dst.to_path_buf(),
    }
}

#[test]
fn pe_needs_libtorch_cuda_so_the_same_build_uses_cuda_on_gpu_machines() {
    let section = dynamic_section();
    let needed: Vec<&str> = section.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(needed.iter().any(|l| l.contains("[libtorch_cuda.so]")), "NEEDED entries: {needed:#?}");
    assert!(!section.contains("(RPATH)"), "RPATH would take precedence over LD_LIBRARY_PATH");
}

#[test]
fn pe_runs_without_ld_library_path() {
    let out = Command::new(PE).arg("info").env_remove("LD_LIBRARY_PATH").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pe info failed: {}", String::from_utf8_lossy(&out.stderr));
    let torch_dir = runpath_libtorch_dir().canonicalize().unwrap();
    assert!(stdout.contains(&format!("loaded: {}", torch_dir.join("libtorch_cpu.so").display())), "{stdout}");
    assert!(stdout.contains("cuda available:"), "{stdout}");
}

#[test]
fn ld_library_path_overrides_the_runpath() {
    // A second "install": a site-packages of links to this one, with torch/lib a real directory,
    // so libtorch's own $ORIGIN-relative paths to the CUDA wheels still resolve.
    let torch_dir = runpath_libtorch_dir();
    let other = tempfile::tempdir().unwrap();
    let other_lib =
        mirror_with_real_dirs(torch_dir.parent().unwrap().parent().unwrap(), other.path(), &["torch", "lib"]);
    let out = Command::new(PE)
        .arg("info")
        .env("LD_LIBRARY_PATH", &other_lib)
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", log.lines().rev().take(20).collect::<Vec<_>>().join("\n"));
    // The loader logs each candidate path it tries, in search order, until one opens.
    let tried: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split("trying file=").nth(1))
        .filter(|path| path.ends_with("/libtorch_cpu.so"))
        .collect();
    let expected = other_lib.join("libtorch_cpu.so");
    assert_eq!(tried, [expected.to_str().unwrap()], "LD_LIBRARY_PATH must be searched first and suffice");
}
