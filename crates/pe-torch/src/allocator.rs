//! glibc malloc settings for a process that allocates the same large tensors every step.
//!
//! libtorch's CPU allocator is plain `malloc`. glibc serves blocks above `M_MMAP_THRESHOLD` (at
//! most 32 MiB, adjusted dynamically) with a fresh `mmap` and returns them with `munmap` on free,
//! so every activation of every step is faulted in page by page and zeroed by the kernel again: a
//! ResNet-50 step at batch 16, 224 px takes 580,000–740,000 page faults and spends a quarter of its
//! CPU time in the kernel (bench/results/train_step_cpu.md). Keeping freed blocks in the heap (no mmap
//! threshold, no trimming) lets the next step reuse them: a few hundred to ~2,500 faults. The cost is memory: the
//! resident set stays at its peak, which fragmentation raises (README gives numbers). Users who set
//! glibc's own `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` keep theirs.

/// Makes glibc keep freed memory for reuse (see the module doc); false when nothing changed (off
/// glibc, or the user configured malloc through the environment).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_configured = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if user_configured {
            return false;
        }
        crate::ffi::malloc_keep_freed_memory()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_accepts_a_threshold_above_its_dynamic_ceiling() {
        // The harness sets none of glibc's malloc variables, so both settings must take.
        assert!(super::keep_freed_memory());
    }
}
