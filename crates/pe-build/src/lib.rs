//! Build-script support for the crates that compile a C++ shim against the libtorch torch-sys found
//! (pe-torch, pe-dist): the one place that knows where libtorch's headers are, which C++ ABI it
//! was built with, how a shim is compiled and how test binaries find libtorch at run time.
//!
//! Call it from a `build.rs` of a crate that depends on `torch-sys` directly: torch-sys
//! (`links = "tch"`) tells its direct dependents where libtorch's libraries are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `torch.utils.cpp_extension` reports, the same query torch-sys makes.
const PYTHON_QUERY: &str = r"
import torch
from torch.utils import cpp_extension
print('ABI', int(torch._C._GLIBCXX_USE_CXX11_ABI))
for p in cpp_extension.include_paths():
    print('INC', p)
";

/// The libtorch a shim compiles and links against.
pub struct Libtorch {
    /// `torch/lib` of the wheel (or `lib/` of a libtorch zip).
    pub lib_dir: PathBuf,
    /// `_GLIBCXX_USE_CXX11_ABI`: "1" or "0".
    pub abi: String,
    pub includes: Vec<PathBuf>,
}

impl Libtorch {
    /// Finds libtorch as torch-sys did: the venv's torch when `LIBTORCH_USE_PYTORCH` is set,
    /// otherwise the headers beside `lib/`. Panics (a build error) with what is missing.
    pub fn locate() -> Self {
        for var in ["LIBTORCH_USE_PYTORCH", "LIBTORCH_CXX11_ABI", "VIRTUAL_ENV"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
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
            let root = lib_dir.parent().unwrap_or(&lib_dir);
            includes.push(root.join("include"));
            includes.push(root.join("include/torch/csrc/api/include"));
        }
        Self { lib_dir, abi, includes }
    }

    /// A C++17 build with torch's includes, its ABI, glog's export macro and this crate's
    /// `pe_shim_guard.h` (the shims' shared error convention). Add files and compile.
    pub fn shim_build(&self) -> cc::Build {
        let guard = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
        println!("cargo:rerun-if-changed={}", guard.join("pe_shim_guard.h").display());
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .pic(true)
            .warnings(false)
            .includes(&self.includes)
            .include(guard)
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", self.abi))
            .flag("-DGLOG_USE_GLOG_EXPORT");
        build
    }

    /// Links the libtorch libraries the shim calls into; emit after compiling the shim so the link
    /// resolves whatever order rustc gives torch-sys's own link lines.
    pub fn link(&self, libs: &[&str]) {
        println!("cargo:rustc-link-search=native={}", self.lib_dir.display());
        for lib in libs {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    /// Test (and example) binaries find libtorch without LD_LIBRARY_PATH (a RUNPATH, so
    /// LD_LIBRARY_PATH still overrides it) and keep libtorch_cuda.so, which --as-needed would drop
    /// (tch-rs #907), so they use CUDA where the machine has it.
    pub fn link_runtime_for(&self, kinds: &[&str]) {
        for kind in kinds {
            if self.has_cuda() {
                println!("cargo:rustc-link-arg-{kind}=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            }
            println!("cargo:rustc-link-arg-{kind}=-Wl,--enable-new-dtags,-rpath,{}", self.lib_dir.display());
        }
    }
}

/// A header directory one of the nvidia-* wheels installs beside torch (`site-packages/nvidia/...`).
#[derive(Debug, Clone, Copy)]
pub struct NvidiaHeaders {
    /// The directory under `site-packages/nvidia`.
    pub dir: &'static str,
    /// A header that must be there (what proves the wheel is installed).
    pub header: &'static str,
    /// The wheel that provides it, for the error message.
    pub wheel: &'static str,
}

/// The CUDA 13 runtime headers a translation unit including `c10/cuda` or `ATen/cuda` needs.
pub const CUDA_HEADERS: [NvidiaHeaders; 3] = [
    NvidiaHeaders { dir: "cu13/include", header: "cuda_runtime_api.h", wheel: "nvidia-cuda-runtime" },
    NvidiaHeaders { dir: "cu13/include", header: "crt/host_config.h", wheel: "nvidia-cuda-crt" },
    NvidiaHeaders { dir: "cu13/include/cccl", header: "cuda/std/version", wheel: "nvidia-cuda-cccl" },
];

/// NCCL's header (c10d's NCCL process group).
pub const NCCL_HEADERS: NvidiaHeaders =
    NvidiaHeaders { dir: "nccl/include", header: "nccl.h", wheel: "nvidia-nccl-cu13" };

impl Libtorch {
    /// Whether this libtorch was built with CUDA (the wheel ships `libtorch_cuda.so`).
    pub fn has_cuda(&self) -> bool {
        self.lib_dir.join("libtorch_cuda.so").exists()
    }

    /// The include directories of `wanted`, from the nvidia-* wheels installed beside torch
    /// (`site-packages/nvidia`), without duplicates. Panics (a build error) naming the wheel to
    /// install when one is missing.
    pub fn nvidia_includes(&self, wanted: &[NvidiaHeaders]) -> Vec<PathBuf> {
        let nvidia = self.lib_dir.join("../../nvidia");
        let mut dirs = Vec::new();
        for NvidiaHeaders { dir, header, wheel } in wanted {
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
}

/// The C++ ABI flag and include directories from the python torch-sys uses (`python` inside a
/// virtual environment, `python3` otherwise).
fn query_python() -> (String, Vec<PathBuf>) {
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
