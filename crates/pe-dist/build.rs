//! Compiles the c10d shim (csrc/) against the libtorch torch-sys found (flags from pe-build), with
//! c10d's Gloo and NCCL backends enabled. Gloo's headers come from Debian's
//! libgloo-dev, NCCL's and CUDA's from the nvidia-* wheels beside torch in the venv.
use std::path::Path;

use pe_build::{CUDA_HEADERS, NCCL_HEADERS};

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
    let headers: Vec<_> = std::iter::once(NCCL_HEADERS).chain(CUDA_HEADERS).collect();
    libtorch
        .shim_build()
        .includes(libtorch.nvidia_includes(&headers))
        .define("USE_C10D_GLOO", None)
        .define("USE_C10D_NCCL", None)
        .file("csrc/pe_dist.cpp")
        .file("csrc/pe_dist_nccl.cpp")
        .compile("pe_dist_shim");
    libtorch.link(&["torch_cuda", "c10_cuda", "torch_cpu", "c10"]);
    // Tests keep libtorch_cuda.so loaded even when nothing but tch's CUDA checks would need it.
    libtorch.link_runtime_for(&["tests"]);
}
