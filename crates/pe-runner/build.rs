//! Link-time fixes the `pe` binary and the test binaries need to use the same libtorch on CPU and
//! GPU machines (pe-build's `link_runtime_for`): the linker drops libtorch_cuda.so by --as-needed
//! because no symbol of it is referenced directly (tch-rs #907, #980), and CUDA would then silently
//! report unavailable; a RUNPATH (not the older RPATH, so LD_LIBRARY_PATH still overrides it, e.g.
//! a GPU machine's torch) finds libtorch without LD_LIBRARY_PATH. The CUDA tests (tests/cuda*.rs)
//! rely on both.

fn main() {
    pe_build::Libtorch::locate().link_runtime_for(&["bins", "tests"]);
}
