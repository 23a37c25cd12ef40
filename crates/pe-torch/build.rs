//! Compiles the C++ shim (csrc/pe_torch.cpp) against the libtorch that torch-sys found, with the
//! flags torch-sys uses for its own libtch (see pe-build).

fn main() {
    println!("cargo:rerun-if-changed=csrc/pe_torch.cpp");
    let libtorch = pe_build::Libtorch::locate();
    libtorch.shim_build().file("csrc/pe_torch.cpp").compile("pe_torch_shim");
    libtorch.link(&["torch_cpu", "c10"]);
    // This crate's tests and examples (the benchmark) use CUDA when the machine has it.
    libtorch.link_runtime_for(&["tests", "examples"]);
}
