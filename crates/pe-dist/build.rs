//! Compiles the c10d shim (csrc/) against the libtorch torch-sys found: -std=c++17, the wheel's
//! C++11 ABI, with c10d's Gloo and NCCL backends enabled. Gloo's headers come from Debian's
//! libgloo-dev, NCCL's and CUDA's from the nvidia-* wheels beside torch in the venv.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ABI flag and include directories `torch.utils.cpp_extension` reports (as torch-sys asks).
const PYTHON_QUERY: &str = r"
import torch
from torch.utils import cpp_extension
print('ABI', int(torch._C._GLIBCXX_USE_CXX11_ABI))
for p in cpp_extension.include_paths():
    print('INC', p)
";

const GLOO_HEADER: &str = "/usr/include/gloo/algorithm.h";

fn main() {
    for file in ["csrc/pe_dist.h", "csrc/pe_dist.cpp", "csrc/pe_dist_nccl.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    for var in ["LIBTORCH_USE_PYTORCH", "LIBTORCH_CXX11_ABI", "VIRTUAL_ENV"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB"),
    );
    assert!(
        Path::new(GLOO_HEADER).exists(),
        "{GLOO_HEADER} is missing: install Debian's libgloo-dev (`make setup` does)"
    );

    let (abi, mut includes) = if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        python_flags()
    } else {
        (std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned()), Vec::new())
    };
    if includes.is_empty() {
        let root = lib_dir.parent().unwrap_or(&lib_dir);
        includes.push(root.join("include"));
        includes.push(root.join("include/torch/csrc/api/include"));
    }
    includes.extend(cuda_includes(&lib_dir));

    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        .define("USE_C10D_NCCL", None)
        .file("csrc/pe_dist.cpp")
        .file("csrc/pe_dist_nccl.cpp")
        .compile("pe_dist_shim");

    // After the static shim, so the link resolves whatever order rustc puts torch-sys's lines in.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    for lib in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    // Tests find libtorch without LD_LIBRARY_PATH, and keep libtorch_cuda.so loaded even when
    // nothing but tch's CUDA checks would need it (tch-rs #907).
    println!("cargo:rustc-link-arg-tests=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    println!("cargo:rustc-link-arg-tests=-Wl,--enable-new-dtags,-rpath,{}", lib_dir.display());
}

/// The C++ ABI flag and torch's include directories, from the venv's `python` (or `python3`).
fn python_flags() -> (String, Vec<PathBuf>) {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let output = Command::new(python)
        .args(["-c", PYTHON_QUERY])
        .output()
        .unwrap_or_else(|e| panic!("running {python} to locate libtorch headers: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let abi = stdout.lines().find_map(|l| l.strip_prefix("ABI ")).map(str::to_owned).unwrap_or_else(|| {
        panic!("{python} did not report torch's C++ ABI: {}", String::from_utf8_lossy(&output.stderr))
    });
    let includes = stdout.lines().filter_map(|l| l.strip_prefix("INC ")).map(PathBuf::from).collect();
    (abi, includes)
}

/// NCCL's and CUDA 13's headers from the nvidia-* wheels installed beside torch (site-packages/nvidia).
fn cuda_includes(lib_dir: &Path) -> Vec<PathBuf> {
    let nvidia = lib_dir.join("../../nvidia");
    let wanted = [
        ("nccl/include", "nccl.h", "nvidia-nccl-cu13"),
        ("cu13/include", "cuda_runtime_api.h", "nvidia-cuda-runtime"),
        ("cu13/include", "crt/host_config.h", "nvidia-cuda-crt"),
        ("cu13/include/cccl", "cuda/std/version", "nvidia-cuda-cccl"),
    ];
    let mut dirs = Vec::new();
    for (dir, header, wheel) in wanted {
        let dir = nvidia.join(dir);
        assert!(
            dir.join(header).exists(),
            "{} is missing: install the {wheel} wheel into the venv (python/requirements.txt)",
            dir.join(header).display()
        );
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}
