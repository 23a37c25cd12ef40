//! Link-time fixes the `pe` binary needs to use the same libtorch on CPU and GPU machines.
use std::path::PathBuf;

fn main() {
    // torch-sys (`links = "tch"`) tells its direct dependents where it found libtorch.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch dir; the pe binary gets no rpath");
        return;
    };
    // The linker drops libtorch_cuda.so by --as-needed because no symbol of it is referenced
    // directly (tch-rs #907, #980); CUDA would then silently report unavailable.
    if PathBuf::from(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // RUNPATH (not the older RPATH) so LD_LIBRARY_PATH still overrides it, e.g. a GPU machine's torch.
    println!("cargo:rustc-link-arg-bins=-Wl,--enable-new-dtags,-rpath,{lib_dir}");
}
