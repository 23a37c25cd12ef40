//! Compiles the c10d shim (csrc/) against the libtorch torch-sys found (flags from pe-build), with
//! c10d's Gloo and NCCL backends enabled. Gloo's headers come from Debian's
//! libgloo-dev, NCCL's and CUDA's from the nvidia-* wheels beside torch in the venv.
use std::path::{Path, PathBuf};

const GLOO_HEADER: &str = "/usr/include/gloo/algorithm.h";

fn main() {
    for file in ["csrc/pe_dist.h", "csrc/pe_dist.cpp", "csrc/pe_dist_nccl.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    assert!(
        Path::new(GLOO_HEADER).exists(),
        "{GLOO_HEADER} is missing: install Debian's libgloo-dev (`make setup` does)"
    );
    let libtorch = pe_build::Libtorch::locate();
    libtorch
        .shim_build()
        .includes(cuda_includes(&libtorch.lib_dir))
        .define("USE_C10D_GLOO", None)
        .define("USE_C10D_NCCL", None)
        .file("csrc/pe_dist.cpp")
        .file("csrc/pe_dist_nccl.cpp")
        .compile("pe_dist_shim");
    libtorch.link(&["torch_cuda", "c10_cuda", "torch_cpu", "c10"]);
    // Tests keep libtorch_cuda.so loaded even when nothing but tch's CUDA checks would need it.
    libtorch.link_runtime_for(&["tests"]);
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
