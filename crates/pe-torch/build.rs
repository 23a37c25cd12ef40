//! Compiles the C++ shim against the libtorch that torch-sys found, with the flags torch-sys uses
//! for its own libtch (see pe-build): csrc/pe_torch.cpp (no CUDA headers) and
//! csrc/pe_cuda_graph.cpp (CUDA graphs and streams, built with the CUDA 13 headers of the venv's
//! nvidia-* wheels). Against a libtorch without CUDA the latter compiles to stubs that report
//! "CUDA is not available", so the crate still builds and links on CPU-only libtorch.

fn main() {
    for file in ["csrc/pe_torch.cpp", "csrc/pe_cuda_graph.cpp", "csrc/pe_cuda_check.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let libtorch = pe_build::Libtorch::locate();
    let mut build = libtorch.shim_build();
    build.file("csrc/pe_torch.cpp").file("csrc/pe_cuda_graph.cpp");
    if libtorch.has_cuda() {
        build.includes(libtorch.nvidia_includes(&pe_build::CUDA_HEADERS));
    } else {
        build.define("PE_TORCH_NO_CUDA", None);
    }
    build.compile("pe_torch_shim");
    if libtorch.has_cuda() {
        libtorch.link(&["torch_cuda", "c10_cuda", "torch_cpu", "c10"]);
    } else {
        libtorch.link(&["torch_cpu", "c10"]);
    }
    // This crate's tests and examples (the benchmark) use CUDA when the machine has it.
    libtorch.link_runtime_for(&["tests", "examples"]);
}
