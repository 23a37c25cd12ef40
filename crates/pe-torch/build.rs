//! Compiles the C++ shim (csrc/pe_torch.cpp) against the libtorch that torch-sys found, with the
//! flags torch-sys uses for its own libtch (-std=c++17, the wheel's C++11 ABI, GLOG_USE_GLOG_EXPORT).
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `torch.utils.cpp_extension` reports, the same query torch-sys makes.
const PYTHON_QUERY: &str = r"
import torch
from torch.utils import cpp_extension
print('LIBTORCH_CXX11:', torch._C._GLIBCXX_USE_CXX11_ABI)
for p in cpp_extension.include_paths():
    print('LIBTORCH_INCLUDE:', p)
";

fn main() {
    println!("cargo:rerun-if-changed=csrc/pe_torch.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");

    // torch-sys (`links = "tch"`) tells its direct dependents where libtorch's libraries are.
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (is torch-sys a direct dependency?)"),
    );

    let (abi, mut includes) = if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        query_python()
    } else {
        (std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned()), Vec::new())
    };
    if includes.is_empty() {
        // A libtorch zip and the torch wheel both keep `include/` beside `lib/`.
        let root = lib_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| lib_dir.clone());
        includes.push(root.join("include"));
        includes.push(root.join("include/torch/csrc/api/include"));
    }

    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/pe_torch.cpp")
        .compile("pe_torch_shim");

    // The shim's symbols live in these; list them after the static library so the link resolves
    // whatever order rustc gives torch-sys's own link lines.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");

    // This crate's tests and examples (the benchmark) use CUDA when the machine has it: keep
    // libtorch_cuda.so, which --as-needed would drop (tch-rs #907), and find libtorch without
    // LD_LIBRARY_PATH whatever the target dir (RUNPATH, so LD_LIBRARY_PATH still overrides it).
    for kind in ["tests", "examples"] {
        if lib_dir.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-{kind}=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
        println!("cargo:rustc-link-arg-{kind}=-Wl,--enable-new-dtags,-rpath,{}", lib_dir.display());
    }
}

/// The C++ ABI flag and include directories from the python torch-sys uses (`python` inside a
/// virtual environment, `python3` otherwise).
fn query_python() -> (String, Vec<PathBuf>) {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let output = Command::new(python)
        .arg("-c")
        .arg(PYTHON_QUERY)
        .output()
        .unwrap_or_else(|e| panic!("running {python} to locate libtorch headers: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut abi = None;
    let mut includes = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("LIBTORCH_CXX11: ") {
            Some("True") => abi = Some("1".to_owned()),
            Some("False") => abi = Some("0".to_owned()),
            _ => {}
        }
        if let Some(path) = line.strip_prefix("LIBTORCH_INCLUDE: ") {
            includes.push(PathBuf::from(path));
        }
    }
    let abi = abi.unwrap_or_else(|| {
        panic!("{python} did not report torch's C++ ABI: {}", String::from_utf8_lossy(&output.stderr))
    });
    (abi, includes)
}
