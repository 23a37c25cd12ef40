//! The only module with `unsafe`: declarations of the C shim (csrc/pe_torch.cpp) and safe wrappers.
//!
//! Soundness rests on three facts that hold for every function here:
//! - tensors are passed as `tch::Tensor::as_ptr()`, a valid `at::Tensor*` for as long as the borrowed
//!   `&Tensor` lives, which outlives the call; the shim only borrows them (copies the handle);
//! - a tensor the shim returns is a fresh `new at::Tensor` that nobody else owns, so handing it to
//!   `Tensor::from_ptr` (which frees it with `delete` on drop) transfers ownership exactly once;
//! - the shim catches every C++ exception and returns either null or a malloc'd C string that we copy
//!   and free exactly once with `pe_torch_free_error`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::abi::{DeviceType, ScalarType};
use crate::memory_format::MemoryFormat;
use crate::{Error, Result};

type TensorPtr = *const C_tensor;

extern "C" {
    fn pe_torch_free_error(err: *mut c_char);

    // `#[repr(i32)]` enums go in as C `int`s; codes coming back are plain `c_int`s, checked before
    // they become enums.
    fn pe_autocast_state(device_type: DeviceType, enabled: *mut bool, dtype: *mut c_int) -> *mut c_char;
    fn pe_autocast_enter(device_type: DeviceType, dtype: ScalarType) -> *mut c_char;
    fn pe_autocast_exit(device_type: DeviceType, prev_enabled: bool, prev_dtype: ScalarType) -> *mut c_char;
    fn pe_autocast_cache_enabled(enabled: *mut bool) -> *mut c_char;
    fn pe_autocast_set_cache_enabled(enabled: bool) -> *mut c_char;

    fn pe_amp_foreach_non_finite_check_and_unscale(
        grads: *const TensorPtr,
        n: usize,
        found_inf: TensorPtr,
        inv_scale: TensorPtr,
    ) -> *mut c_char;

    fn pe_contiguous_format(t: TensorPtr, format: MemoryFormat, out: *mut *mut C_tensor) -> *mut c_char;
    fn pe_is_contiguous_format(t: TensorPtr, format: MemoryFormat, out: *mut bool) -> *mut c_char;
    fn pe_suggest_memory_format(t: TensorPtr, out: *mut c_int) -> *mut c_char;
    fn pe_set_data(t: TensorPtr, new_data: TensorPtr) -> *mut c_char;
    fn pe_reset_grad(t: TensorPtr) -> *mut c_char;

    fn pe_fused_adamw(
        params: *const TensorPtr,
        grads: *const TensorPtr,
        exp_avgs: *const TensorPtr,
        exp_avg_sqs: *const TensorPtr,
        steps: *const TensorPtr,
        n: usize,
        lr: f64,
        lr_tensor: TensorPtr,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: TensorPtr,
        found_inf: TensorPtr,
    ) -> *mut c_char;
    fn pe_fused_sgd(
        params: *const TensorPtr,
        grads: *const TensorPtr,
        momentum_buffers: *const TensorPtr,
        n: usize,
        lr: f64,
        lr_tensor: TensorPtr,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
        is_first_step: bool,
        grad_scale: TensorPtr,
        found_inf: TensorPtr,
    ) -> *mut c_char;

    fn pe_foreach_lerp_(
        selfs: *const TensorPtr,
        ends: *const TensorPtr,
        n: usize,
        weight: f64,
    ) -> *mut c_char;
    fn pe_foreach_lerp_tensor_(
        selfs: *const TensorPtr,
        ends: *const TensorPtr,
        n: usize,
        weight: TensorPtr,
    ) -> *mut c_char;
    fn pe_foreach_norm(tensors: *const TensorPtr, n: usize, out: *mut *mut C_tensor) -> *mut c_char;
    fn pe_foreach_mul_(tensors: *const TensorPtr, n: usize, factor: TensorPtr) -> *mut c_char;
    fn pe_cuda_device_count(out: *mut i64) -> *mut c_char;
    fn pe_cuda_set_device(index: i64) -> *mut c_char;
    fn pe_cuda_current_device(out: *mut i64) -> *mut c_char;
    fn pe_cuda_memory_stats(
        index: i64,
        allocated: *mut i64,
        max_allocated: *mut i64,
        reserved: *mut i64,
        max_reserved: *mut i64,
    ) -> *mut c_char;
    fn pe_cuda_reset_peak_memory_stats(index: i64) -> *mut c_char;
    fn pe_cuda_empty_cache() -> *mut c_char;
    fn pe_jit_freeze_file(in_path: *const c_char, out_path: *const c_char) -> *mut c_char;
    fn pe_cuda_synchronize(index: i64) -> *mut c_char;

    fn pe_cuda_stream_from_pool(device: i64, out: *mut *mut PeCudaStream) -> *mut c_char;
    fn pe_cuda_stream_free(stream: *mut PeCudaStream);
    fn pe_cuda_stream_enter(stream: *const PeCudaStream, out: *mut *mut PeStreamGuard) -> *mut c_char;
    fn pe_cuda_stream_exit(guard: *mut PeStreamGuard) -> *mut c_char;
    fn pe_cuda_graph_new(device: i64, out: *mut *mut PeCudaGraph) -> *mut c_char;
    fn pe_cuda_graph_free(graph: *mut PeCudaGraph);
    fn pe_cuda_graph_capture_begin(graph: *mut PeCudaGraph) -> *mut c_char;
    fn pe_cuda_graph_capture_end(graph: *mut PeCudaGraph) -> *mut c_char;
    fn pe_cuda_graph_replay(graph: *mut PeCudaGraph) -> *mut c_char;
    fn pe_cuda_graph_reset(graph: *mut PeCudaGraph) -> *mut c_char;
}

/// Opaque C++ objects of csrc/pe_cuda_graph.cpp, only ever behind pointers.
#[repr(C)]
struct PeCudaStream {
    _private: [u8; 0],
}
#[repr(C)]
struct PeStreamGuard {
    _private: [u8; 0],
}
#[repr(C)]
struct PeCudaGraph {
    _private: [u8; 0],
}

/// Turns the shim's error convention (null = success) into a `Result`, freeing the message.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim malloc'd for us; we copy it out
    // before freeing it, and free it exactly once with the shim's matching `free`.
    let msg = unsafe {
        let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
        pe_torch_free_error(err);
        msg
    };
    Err(Error::Torch(msg))
}

fn ptrs(tensors: &[&Tensor]) -> Vec<TensorPtr> {
    tensors.iter().map(|t| t.as_ptr()).collect()
}

fn opt_ptr(t: Option<&Tensor>) -> TensorPtr {
    t.map_or(ptr::null(), Tensor::as_ptr)
}

/// Takes ownership of a tensor the shim allocated.
fn owned(out: *mut C_tensor) -> Result<Tensor> {
    if out.is_null() {
        return Err(Error::Torch("shim returned no tensor".into()));
    }
    // SAFETY: `out` is a fresh `new at::Tensor` from the shim that no one else references;
    // `Tensor::from_ptr` becomes its only owner and deletes it on drop.
    Ok(unsafe { Tensor::from_ptr(out) })
}

pub(crate) fn autocast_state(device_type: DeviceType) -> Result<(bool, ScalarType)> {
    let (mut enabled, mut dtype) = (false, 0);
    // SAFETY: both out-pointers point at live locals; the shim only writes plain values there.
    check(unsafe { pe_autocast_state(device_type, &mut enabled, &mut dtype) })?;
    let dtype = ScalarType::from_code(dtype)
        .ok_or_else(|| Error::Torch(format!("unexpected autocast dtype code {dtype}")))?;
    Ok((enabled, dtype))
}

pub(crate) fn autocast_enter(device_type: DeviceType, dtype: ScalarType) -> Result<()> {
    // SAFETY: plain enum arguments; the shim only touches thread-local state.
    check(unsafe { pe_autocast_enter(device_type, dtype) })
}

pub(crate) fn autocast_exit(
    device_type: DeviceType,
    prev_enabled: bool,
    prev_dtype: ScalarType,
) -> Result<()> {
    // SAFETY: plain arguments; the shim validates them and only touches thread-local state.
    check(unsafe { pe_autocast_exit(device_type, prev_enabled, prev_dtype) })
}

pub(crate) fn autocast_cache_enabled() -> Result<bool> {
    let mut enabled = false;
    // SAFETY: `enabled` is a live local the shim writes a bool to.
    check(unsafe { pe_autocast_cache_enabled(&mut enabled) })?;
    Ok(enabled)
}

pub(crate) fn autocast_set_cache_enabled(enabled: bool) -> Result<()> {
    // SAFETY: plain argument; the shim only touches thread-local state.
    check(unsafe { pe_autocast_set_cache_enabled(enabled) })
}

pub(crate) fn amp_non_finite_check_and_unscale(
    grads: &[&Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) -> Result<()> {
    let p = ptrs(grads);
    // SAFETY: `p` holds `grads.len()` valid tensor pointers borrowed for the call (module docs).
    check(unsafe {
        pe_amp_foreach_non_finite_check_and_unscale(
            p.as_ptr(),
            p.len(),
            found_inf.as_ptr(),
            inv_scale.as_ptr(),
        )
    })
}

pub(crate) fn contiguous_format(t: &Tensor, format: MemoryFormat) -> Result<Tensor> {
    let mut out = ptr::null_mut();
    // SAFETY: `t` is borrowed for the call; `out` is a live local the shim writes an owned tensor to.
    check(unsafe { pe_contiguous_format(t.as_ptr(), format, &mut out) })?;
    owned(out)
}

pub(crate) fn is_contiguous_format(t: &Tensor, format: MemoryFormat) -> Result<bool> {
    let mut out = false;
    // SAFETY: `t` is borrowed for the call; `out` is a live local.
    check(unsafe { pe_is_contiguous_format(t.as_ptr(), format, &mut out) })?;
    Ok(out)
}

pub(crate) fn suggest_memory_format(t: &Tensor) -> Result<MemoryFormat> {
    let mut out = 0;
    // SAFETY: `t` is borrowed for the call; `out` is a live local.
    check(unsafe { pe_suggest_memory_format(t.as_ptr(), &mut out) })?;
    MemoryFormat::from_code(out).ok_or_else(|| Error::Torch(format!("unexpected memory format code {out}")))
}

pub(crate) fn set_data(t: &Tensor, new_data: &Tensor) -> Result<()> {
    // SAFETY: both tensors are borrowed for the call; the shim swaps `t`'s data behind its handle,
    // which every Rust `Tensor` sharing that TensorImpl observes, as Python's `p.data = x` does.
    check(unsafe { pe_set_data(t.as_ptr(), new_data.as_ptr()) })
}

pub(crate) fn reset_grad(t: &Tensor) -> Result<()> {
    // SAFETY: `t` is borrowed for the call; the shim drops its `.grad` reference.
    check(unsafe { pe_reset_grad(t.as_ptr()) })
}

pub(crate) fn foreach_lerp_(selfs: &[&Tensor], ends: &[&Tensor], weight: f64) -> Result<()> {
    if selfs.len() != ends.len() {
        return Err(Error::Torch(format!("foreach_lerp_: {} tensors vs {} ends", selfs.len(), ends.len())));
    }
    let (a, b) = (ptrs(selfs), ptrs(ends));
    // SAFETY: `a` and `b` hold `a.len()` valid tensor pointers each, borrowed for the call.
    check(unsafe { pe_foreach_lerp_(a.as_ptr(), b.as_ptr(), a.len(), weight) })
}

pub(crate) fn foreach_lerp_tensor_(selfs: &[&Tensor], ends: &[&Tensor], weight: &Tensor) -> Result<()> {
    if selfs.len() != ends.len() {
        return Err(Error::Torch(format!("foreach_lerp_: {} tensors vs {} ends", selfs.len(), ends.len())));
    }
    let (a, b) = (ptrs(selfs), ptrs(ends));
    // SAFETY: `a` and `b` hold `a.len()` valid tensor pointers each and `weight` is borrowed, all
    // for the call.
    check(unsafe { pe_foreach_lerp_tensor_(a.as_ptr(), b.as_ptr(), a.len(), weight.as_ptr()) })
}

pub(crate) fn foreach_norm(tensors: &[&Tensor]) -> Result<Vec<Tensor>> {
    let p = ptrs(tensors);
    let mut out = vec![ptr::null_mut(); p.len()];
    // SAFETY: `p` holds valid borrowed pointers; `out` has room for one owned tensor per input.
    check(unsafe { pe_foreach_norm(p.as_ptr(), p.len(), out.as_mut_ptr()) })?;
    out.into_iter().map(owned).collect()
}

pub(crate) fn foreach_mul_(tensors: &[&Tensor], factor: &Tensor) -> Result<()> {
    let p = ptrs(tensors);
    // SAFETY: `p` holds `p.len()` valid tensor pointers and `factor` is borrowed for the call.
    check(unsafe { pe_foreach_mul_(p.as_ptr(), p.len(), factor.as_ptr()) })
}

/// The learning rate of a fused optimizer call: a host value (passed by value into the kernel), or a
/// 0-dim float32 tensor the kernel reads on the device (a CUDA graph replays it with new values).
#[derive(Clone, Copy)]
pub(crate) enum Lr<'a> {
    Host(f64),
    Device(&'a Tensor),
}

impl Lr<'_> {
    fn host(self) -> f64 {
        match self {
            Lr::Host(lr) => lr,
            Lr::Device(_) => 0.0,
        }
    }

    fn device_ptr(self) -> TensorPtr {
        match self {
            Lr::Host(_) => ptr::null(),
            Lr::Device(t) => t.as_ptr(),
        }
    }
}

/// Arguments of one `_fused_adamw_` call: equal-length lists on one device and dtype.
pub(crate) struct AdamWLists<'a> {
    pub params: Vec<&'a Tensor>,
    pub grads: Vec<&'a Tensor>,
    pub exp_avgs: Vec<&'a Tensor>,
    pub exp_avg_sqs: Vec<&'a Tensor>,
    pub steps: Vec<&'a Tensor>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_adamw(
    lists: &AdamWLists<'_>,
    lr: Lr<'_>,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let n = lists.params.len();
    let lens = [&lists.grads, &lists.exp_avgs, &lists.exp_avg_sqs, &lists.steps];
    if lens.iter().any(|l| l.len() != n) {
        return Err(Error::Invalid("fused_adamw: tensor lists differ in length".into()));
    }
    let (p, g, m, v, s) = (
        ptrs(&lists.params),
        ptrs(&lists.grads),
        ptrs(&lists.exp_avgs),
        ptrs(&lists.exp_avg_sqs),
        ptrs(&lists.steps),
    );
    // SAFETY: five arrays of `n` valid tensor pointers (lengths checked above) and two optional
    // pointers (null = None), all borrowed for the call (module docs).
    check(unsafe {
        pe_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            lr.host(),
            lr.device_ptr(),
            beta1,
            beta2,
            weight_decay,
            eps,
            opt_ptr(grad_scale),
            opt_ptr(found_inf),
        )
    })
}

/// Arguments of one `_fused_sgd_` call: equal-length lists on one device and dtype
/// (`momentum_buffers` is empty when momentum is 0).
pub(crate) struct SgdLists<'a> {
    pub params: Vec<&'a Tensor>,
    pub grads: Vec<&'a Tensor>,
    pub momentum_buffers: Vec<&'a Tensor>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_sgd(
    lists: &SgdLists<'_>,
    lr: Lr<'_>,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    is_first_step: bool,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let n = lists.params.len();
    let bufs_ok =
        if momentum == 0.0 { lists.momentum_buffers.is_empty() } else { lists.momentum_buffers.len() == n };
    if lists.grads.len() != n || !bufs_ok {
        return Err(Error::Invalid("fused_sgd: tensor lists differ in length".into()));
    }
    let (p, g, b) = (ptrs(&lists.params), ptrs(&lists.grads), ptrs(&lists.momentum_buffers));
    // SAFETY: `p` and `g` hold `n` valid pointers and `b` holds `n` (momentum != 0) or none, in which
    // case the shim does not read it; all are borrowed for the call (module docs).
    check(unsafe {
        pe_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            n,
            lr.host(),
            lr.device_ptr(),
            momentum,
            weight_decay,
            nesterov,
            is_first_step,
            opt_ptr(grad_scale),
            opt_ptr(found_inf),
        )
    })
}

pub(crate) fn cuda_device_count() -> Result<i64> {
    let mut out = 0;
    // SAFETY: `out` is a live local the shim writes an integer to.
    check(unsafe { pe_cuda_device_count(&mut out) })?;
    Ok(out)
}

pub(crate) fn cuda_set_device(index: i64) -> Result<()> {
    // SAFETY: plain integer argument, validated by the shim.
    check(unsafe { pe_cuda_set_device(index) })
}

pub(crate) fn cuda_current_device() -> Result<i64> {
    let mut out = 0;
    // SAFETY: `out` is a live local the shim writes an integer to.
    check(unsafe { pe_cuda_current_device(&mut out) })?;
    Ok(out)
}

/// (allocated, max allocated, reserved, max reserved) bytes of one CUDA device.
pub(crate) fn cuda_memory_stats(index: i64) -> Result<[i64; 4]> {
    let mut s = [0i64; 4];
    let [a, b, c, d] = &mut s;
    // SAFETY: four distinct live locals the shim writes integers to.
    check(unsafe { pe_cuda_memory_stats(index, a, b, c, d) })?;
    Ok(s)
}

pub(crate) fn cuda_reset_peak_memory_stats(index: i64) -> Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { pe_cuda_reset_peak_memory_stats(index) })
}

pub(crate) fn cuda_empty_cache() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { pe_cuda_empty_cache() })
}

pub(crate) fn jit_freeze_file(in_path: &std::path::Path, out_path: &std::path::Path) -> Result<()> {
    let c_path = |path: &std::path::Path| {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid(format!("{}: a path with a NUL byte", path.display())))
    };
    let (input, output) = (c_path(in_path)?, c_path(out_path)?);
    // SAFETY: two NUL-terminated strings that outlive the call; the shim only reads them.
    check(unsafe { pe_jit_freeze_file(input.as_ptr(), output.as_ptr()) })
}

pub(crate) fn cuda_synchronize(index: i64) -> Result<()> {
    // SAFETY: plain integer argument.
    check(unsafe { pe_cuda_synchronize(index) })
}

/// glibc: serve every block below 2 GiB (the largest value mallopt takes) from the heap and never
/// trim it, so freed tensors are reused instead of unmapped (see `crate::allocator`). The 32 MiB
/// ceiling glibc documents applies to its dynamic threshold, not to a value set here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn malloc_keep_freed_memory() -> bool {
    // SAFETY: mallopt only changes allocator parameters and is thread-safe (it takes the arena lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, libc::c_int::MAX) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
    }
}

/// An owned stream handle of csrc/pe_cuda_graph.cpp (a copy of a c10 pool stream), freed on drop.
pub(crate) struct StreamHandle(*mut PeCudaStream);

impl StreamHandle {
    pub(crate) fn from_pool(device: i64) -> Result<Self> {
        let mut out = ptr::null_mut();
        // SAFETY: `out` is a live local the shim writes a fresh heap handle to (null on error).
        check(unsafe { pe_cuda_stream_from_pool(device, &mut out) })?;
        Ok(Self(out))
    }

    /// Makes the stream current until the returned guard exits. The guard holds its own copy of
    /// the stream, so it does not borrow the handle.
    pub(crate) fn enter(&self) -> Result<GuardHandle> {
        let mut out = ptr::null_mut();
        // SAFETY: `self.0` is live while `self` is; `out` is a live local.
        check(unsafe { pe_cuda_stream_enter(self.0, &mut out) })?;
        Ok(GuardHandle(out))
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `pe_cuda_stream_from_pool` and is freed only here.
        unsafe { pe_cuda_stream_free(self.0) }
    }
}

/// An entered side stream; exiting (explicitly or on drop) restores the previous stream.
pub(crate) struct GuardHandle(*mut PeStreamGuard);

impl GuardHandle {
    pub(crate) fn exit(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.0, ptr::null_mut());
        // SAFETY: `raw` came from `pe_cuda_stream_enter` and is taken out of `self`, so Drop does not
        // pass it again; the shim deletes it whatever happens.
        check(unsafe { pe_cuda_stream_exit(raw) })
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: as in `exit`; this is the only other place the handle is passed.
        if let Err(e) = check(unsafe { pe_cuda_stream_exit(self.0) }) {
            tracing::warn!("leaving a CUDA side stream failed: {e}");
        }
    }
}

/// What to do with a graph handle.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GraphOp {
    CaptureBegin,
    CaptureEnd,
    Replay,
    Reset,
}

/// An owned `at::cuda::CUDAGraph`, freed on drop. Not `Send`: used by the thread that made it.
pub(crate) struct GraphHandle(*mut PeCudaGraph);

impl GraphHandle {
    pub(crate) fn new(device: i64) -> Result<Self> {
        let mut out = ptr::null_mut();
        // SAFETY: `out` is a live local the shim writes a fresh heap handle to (null on error).
        check(unsafe { pe_cuda_graph_new(device, &mut out) })?;
        Ok(Self(out))
    }

    pub(crate) fn run(&self, op: GraphOp) -> Result<()> {
        // SAFETY: `self.0` is live while `self` is; each call only borrows the handle.
        check(unsafe {
            match op {
                GraphOp::CaptureBegin => pe_cuda_graph_capture_begin(self.0),
                GraphOp::CaptureEnd => pe_cuda_graph_capture_end(self.0),
                GraphOp::Replay => pe_cuda_graph_replay(self.0),
                GraphOp::Reset => pe_cuda_graph_reset(self.0),
            }
        })
    }
}

impl Drop for GraphHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `pe_cuda_graph_new` and is freed only here.
        unsafe { pe_cuda_graph_free(self.0) }
    }
}
