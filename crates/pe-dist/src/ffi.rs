//! The only module with `unsafe`: the c10d shim's declarations (csrc/) with owning handles and safe
//! wrappers, plus the two libc calls the launcher needs.
//!
//! Soundness rests on these facts, which hold for every function here:
//! - tensors are passed as `tch::Tensor::as_ptr()`, a valid `at::Tensor*` while the borrowed
//!   `&Tensor` lives, which outlives the call; the shim copies the handle (c10d keeps its own
//!   reference where it needs one, e.g. the Reducer's parameters);
//! - stores, groups and reducers are heap objects the shim allocates; each handle below owns one,
//!   is neither `Clone` nor `Send`, and frees it exactly once on drop. c10d's objects keep their own
//!   references to what they use (a group holds its store, a reducer its group), so dropping
//!   handles in any order is sound;
//! - the shim catches every C++ exception and returns either null or a malloc'd C string that we
//!   copy and free exactly once with `pe_dist_free_error`;
//! - strings passed in are `CString`s that live across the call.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr::{self, NonNull};

use tch::Tensor;
use torch_sys::C_tensor;

type TensorPtr = *const C_tensor;

#[repr(C)]
pub(crate) struct PeStore {
    _opaque: [u8; 0],
}
#[repr(C)]
pub(crate) struct PeGroup {
    _opaque: [u8; 0],
}
#[repr(C)]
pub(crate) struct PeReducer {
    _opaque: [u8; 0],
}

extern "C" {
    fn pe_dist_free_error(err: *mut c_char);

    fn pe_dist_tcp_store(
        host: *const c_char,
        port: u16,
        is_server: bool,
        num_workers: i64,
        timeout_ms: i64,
        out: *mut *mut PeStore,
        bound_port: *mut u16,
    ) -> *mut c_char;
    fn pe_dist_store_free(store: *mut PeStore);

    fn pe_dist_group_gloo(
        store: *mut PeStore,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        hostname: *const c_char,
        iface: *const c_char,
        out: *mut *mut PeGroup,
    ) -> *mut c_char;
    fn pe_dist_group_nccl(
        store: *mut PeStore,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device_index: i64,
        out: *mut *mut PeGroup,
    ) -> *mut c_char;
    fn pe_dist_group_free(group: *mut PeGroup);

    fn pe_dist_all_reduce(group: *mut PeGroup, tensors: *const TensorPtr, n: usize, op: c_int)
        -> *mut c_char;
    fn pe_dist_broadcast_coalesced(
        group: *mut PeGroup,
        tensors: *const TensorPtr,
        n: usize,
        buffer_bytes: usize,
        root: c_int,
    ) -> *mut c_char;
    fn pe_dist_barrier(group: *mut PeGroup) -> *mut c_char;

    fn pe_dist_reducer_new(
        group: *mut PeGroup,
        params: *const TensorPtr,
        n: usize,
        names: *const *const c_char,
        bucket_cap_bytes: i64,
        first_bucket_cap_bytes: i64,
        gradient_as_bucket_view: bool,
        out: *mut *mut PeReducer,
    ) -> *mut c_char;
    fn pe_dist_reducer_prepare_for_forward(reducer: *mut PeReducer, rebuilt: *mut bool) -> *mut c_char;
    fn pe_dist_reducer_prepare_for_backward(
        reducer: *mut PeReducer,
        outputs: *const TensorPtr,
        n: usize,
    ) -> *mut c_char;
    fn pe_dist_reducer_bucket_count(reducer: *mut PeReducer, out: *mut usize) -> *mut c_char;
    fn pe_dist_reducer_comm_stats(
        reducer: *mut PeReducer,
        compute_ns: *mut i64,
        comm_ns: *mut i64,
        overlap_ns: *mut i64,
    ) -> *mut c_char;
    fn pe_dist_reducer_free(reducer: *mut PeReducer) -> *mut c_char;
}

/// The shim's error convention (null = success) as a `Result` carrying c10d's raw message.
fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim malloc'd; copied, then freed once.
    Err(unsafe {
        let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
        pe_dist_free_error(err);
        msg
    })
}

fn ptrs(tensors: &[Tensor]) -> Vec<TensorPtr> {
    tensors.iter().map(|t| t.as_ptr() as TensorPtr).collect()
}

fn opt_ptr(s: Option<&CString>) -> *const c_char {
    s.map_or(ptr::null(), |s| s.as_ptr())
}

fn handle<T>(out: *mut T) -> Result<NonNull<T>, String> {
    NonNull::new(out).ok_or_else(|| "the shim returned no object".to_owned())
}

/// Owns a c10d `Store` (a TCPStore).
pub(crate) struct Store(NonNull<PeStore>);

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: we own the handle (module docs); it is freed once, here.
        unsafe { pe_dist_store_free(self.0.as_ptr()) }
    }
}

/// Creates a TCPStore; returns it with the port it actually uses.
pub(crate) fn tcp_store(
    host: &CStr,
    port: u16,
    is_server: bool,
    num_workers: i64,
    timeout_ms: i64,
) -> Result<(Store, u16), String> {
    let (mut out, mut bound) = (ptr::null_mut(), 0u16);
    // SAFETY: `host` lives across the call; the out-pointers point at live locals.
    check(unsafe {
        pe_dist_tcp_store(host.as_ptr(), port, is_server, num_workers, timeout_ms, &mut out, &mut bound)
    })?;
    Ok((Store(handle(out)?), bound))
}

/// Owns a c10d `ProcessGroup` with its backend.
pub(crate) struct Group(NonNull<PeGroup>);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: we own the handle (module docs); it is freed once, here.
        unsafe { pe_dist_group_free(self.0.as_ptr()) }
    }
}

pub(crate) fn group_gloo(
    store: &Store,
    rank: i32,
    world: i32,
    timeout_ms: i64,
    hostname: Option<&CString>,
    iface: Option<&CString>,
) -> Result<Group, String> {
    let mut out = ptr::null_mut();
    // SAFETY: `store` is a live handle; the strings live across the call; `out` is a live local.
    check(unsafe {
        pe_dist_group_gloo(
            store.0.as_ptr(),
            rank,
            world,
            timeout_ms,
            opt_ptr(hostname),
            opt_ptr(iface),
            &mut out,
        )
    })?;
    Ok(Group(handle(out)?))
}

pub(crate) fn group_nccl(
    store: &Store,
    rank: i32,
    world: i32,
    timeout_ms: i64,
    device_index: i64,
) -> Result<Group, String> {
    let mut out = ptr::null_mut();
    // SAFETY: `store` is a live handle; `out` is a live local.
    check(unsafe { pe_dist_group_nccl(store.0.as_ptr(), rank, world, timeout_ms, device_index, &mut out) })?;
    Ok(Group(handle(out)?))
}

impl Group {
    pub(crate) fn all_reduce(&self, tensors: &[Tensor], op: i32) -> Result<(), String> {
        let p = ptrs(tensors);
        // SAFETY: a live group handle and `p.len()` borrowed tensor pointers (module docs).
        check(unsafe { pe_dist_all_reduce(self.0.as_ptr(), p.as_ptr(), p.len(), op) })
    }

    pub(crate) fn broadcast_coalesced(
        &self,
        tensors: &[Tensor],
        buffer_bytes: usize,
        root: i32,
    ) -> Result<(), String> {
        let p = ptrs(tensors);
        // SAFETY: a live group handle and `p.len()` borrowed tensor pointers (module docs).
        check(unsafe {
            pe_dist_broadcast_coalesced(self.0.as_ptr(), p.as_ptr(), p.len(), buffer_bytes, root)
        })
    }

    pub(crate) fn barrier(&self) -> Result<(), String> {
        // SAFETY: a live group handle.
        check(unsafe { pe_dist_barrier(self.0.as_ptr()) })
    }
}

/// Owns a c10d `Reducer` (its autograd hooks are removed when it is freed).
pub(crate) struct Reducer(NonNull<PeReducer>);

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: we own the handle (module docs); it is freed once, here.
        if let Err(e) = check(unsafe { pe_dist_reducer_free(self.0.as_ptr()) }) {
            tracing::warn!("destroying the Reducer: {e}");
        }
    }
}

pub(crate) fn reducer_new(
    group: &Group,
    params: &[Tensor],
    names: Option<&[CString]>,
    bucket_cap_bytes: i64,
    first_bucket_cap_bytes: i64,
    gradient_as_bucket_view: bool,
) -> Result<Reducer, String> {
    let p = ptrs(params);
    let name_ptrs: Option<Vec<*const c_char>> = names.map(|n| n.iter().map(|s| s.as_ptr()).collect());
    if name_ptrs.as_ref().is_some_and(|n| n.len() != p.len()) {
        return Err(format!(
            "{} parameter names for {} parameters",
            name_ptrs.map_or(0, |n| n.len()),
            p.len()
        ));
    }
    let mut out = ptr::null_mut();
    // SAFETY: a live group handle, `p.len()` borrowed tensor pointers and as many names (checked
    // above) whose `CString`s outlive the call; `out` is a live local.
    check(unsafe {
        pe_dist_reducer_new(
            group.0.as_ptr(),
            p.as_ptr(),
            p.len(),
            name_ptrs.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            bucket_cap_bytes,
            first_bucket_cap_bytes,
            gradient_as_bucket_view,
            &mut out,
        )
    })?;
    Ok(Reducer(handle(out)?))
}

impl Reducer {
    pub(crate) fn prepare_for_forward(&self) -> Result<bool, String> {
        let mut rebuilt = false;
        // SAFETY: a live reducer handle; `rebuilt` is a live local.
        check(unsafe { pe_dist_reducer_prepare_for_forward(self.0.as_ptr(), &mut rebuilt) })?;
        Ok(rebuilt)
    }

    pub(crate) fn prepare_for_backward(&self, outputs: &[Tensor]) -> Result<(), String> {
        let p = ptrs(outputs);
        // SAFETY: a live reducer handle and `p.len()` borrowed tensor pointers.
        check(unsafe { pe_dist_reducer_prepare_for_backward(self.0.as_ptr(), p.as_ptr(), p.len()) })
    }

    /// (backward compute, all-reduce, overlap) averages in ns.
    pub(crate) fn comm_stats(&self) -> Result<[i64; 3], String> {
        let mut v = [0i64; 3];
        let [a, b, c] = &mut v;
        // SAFETY: a live reducer handle; the three out-pointers point at distinct live locals.
        check(unsafe { pe_dist_reducer_comm_stats(self.0.as_ptr(), a, b, c) })?;
        Ok(v)
    }

    pub(crate) fn bucket_count(&self) -> Result<usize, String> {
        let mut n = 0;
        // SAFETY: a live reducer handle; `n` is a live local.
        check(unsafe { pe_dist_reducer_bucket_count(self.0.as_ptr(), &mut n) })?;
        Ok(n)
    }
}

/// Sends `signal` to process `pid`; false if it no longer exists.
pub(crate) fn send_signal(pid: u32, signal: c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Makes the child `command` spawns receive SIGTERM when the thread that spawned it ends (the
/// launcher spawns and waits on one thread), so ranks never outlive a killed launcher.
pub(crate) fn terminate_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
