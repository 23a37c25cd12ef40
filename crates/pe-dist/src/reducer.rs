//! torch DDP's gradient synchronisation: c10d's `Reducer`, bucketed and overlapped with backward.
use std::ffi::CString;
use std::time::Duration;

use tch::Tensor;

use crate::{ffi, Error, ProcessGroup, Result};

/// How the Reducer buckets gradients; the defaults are torch DDP's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReducerOptions {
    /// Cap of every bucket but the first (`bucket_cap_mb=25`).
    pub bucket_cap_bytes: usize,
    /// Cap of the first bucket, the last parameters' gradients (`_DEFAULT_FIRST_BUCKET_BYTES`).
    pub first_bucket_cap_bytes: usize,
    /// Let `.grad()` alias the bucket memory instead of being copied back (DDP's option; off by default).
    pub gradient_as_bucket_view: bool,
    /// Parameter names, in the order of `params`, for c10d's error messages (may be empty).
    pub param_names: Vec<String>,
}

impl Default for ReducerOptions {
    fn default() -> Self {
        Self {
            bucket_cap_bytes: 25 * 1024 * 1024,
            first_bucket_cap_bytes: 1024 * 1024,
            gradient_as_bucket_view: false,
            param_names: Vec::new(),
        }
    }
}

/// Where a step's gradient all-reduce time went (DDP's runtime statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommStats {
    /// From the start of backward to the last gradient.
    pub backward_compute: Duration,
    /// From the first bucket's all-reduce start to the last one's end.
    pub all_reduce: Duration,
    /// The part of `all_reduce` that ran while backward was still computing.
    pub overlap: Duration,
}

impl CommStats {
    /// Share of the all-reduce hidden behind backward, in [0, 1].
    pub fn hidden_share(&self) -> f64 {
        if self.all_reduce.is_zero() {
            return 0.0;
        }
        (self.overlap.as_secs_f64() / self.all_reduce.as_secs_f64()).clamp(0.0, 1.0)
    }
}

/// Averages the parameters' gradients over all ranks during backward.
///
/// Per optimizer step, on every rank: [`Reducer::prepare_for_forward`], forward,
/// [`Reducer::prepare_for_backward`], backward (use `f_backward`: a failed all-reduce surfaces
/// there), optimizer step. Micro-batches that only accumulate (DDP's `no_sync`) call neither
/// prepare function; their gradients add up locally and are reduced with the last micro-batch's.
/// The reduced gradients are written to the parameters' own `.grad()`.
pub struct Reducer {
    reducer: ffi::Reducer,
    rank: usize,
    world_size: usize,
}

impl Reducer {
    /// Assigns `params` (the same trainable tensors, in the same order, on every rank) to buckets
    /// with `compute_bucket_assignment_by_size` in reverse order, after checking all ranks' shapes
    /// agree. Broadcast the initial parameters and buffers first
    /// ([`ProcessGroup::broadcast_coalesced_`]); this does not.
    pub fn new(group: &ProcessGroup, params: &[Tensor], options: &ReducerOptions) -> Result<Self> {
        let what = format!("rank {}/{}: creating the Reducer", group.rank(), group.world_size());
        if params.is_empty() {
            return Err(Error::Invalid(format!("{what}: no parameters")));
        }
        if let Some(i) = params.iter().position(|p| !p.requires_grad()) {
            return Err(Error::Invalid(format!("{what}: parameter {i} does not require grad")));
        }
        let names = if options.param_names.is_empty() {
            None
        } else {
            let names: Result<Vec<CString>> = options
                .param_names
                .iter()
                .map(|n| {
                    CString::new(n.as_str()).map_err(|_| Error::Invalid(format!("parameter name {n:?}")))
                })
                .collect();
            Some(names?)
        };
        let cap =
            |bytes: usize| i64::try_from(bytes).map_err(|_| Error::Invalid(format!("bucket cap {bytes}")));
        let reducer = ffi::reducer_new(
            group.handle(),
            params,
            names.as_deref(),
            cap(options.bucket_cap_bytes)?,
            cap(options.first_bucket_cap_bytes)?,
            options.gradient_as_bucket_view,
        )
        .map_err(|m| Error::c10d(what, m))?;
        Ok(Self { reducer, rank: group.rank(), world_size: group.world_size() })
    }

    /// Before the forward of a step whose backward reduces. Returns true on the one step where the
    /// buckets were rebuilt in the order gradients arrived during the first backward.
    pub fn prepare_for_forward(&mut self) -> Result<bool> {
        self.reducer.prepare_for_forward().map_err(|m| self.failed("prepare_for_forward", m))
    }

    /// After that forward, before its backward: arms the autograd hooks that all-reduce each bucket
    /// as soon as its gradients are ready. `outputs` may be empty (every parameter is used).
    pub fn prepare_for_backward(&mut self, outputs: &[Tensor]) -> Result<()> {
        self.reducer.prepare_for_backward(outputs).map_err(|m| self.failed("prepare_for_backward", m))
    }

    /// How many buckets the gradients are all-reduced in.
    pub fn bucket_count(&self) -> Result<usize> {
        self.reducer.bucket_count().map_err(|m| self.failed("bucket_count", m))
    }

    /// DDP's own timing of gradient communication against backward, averaged over the sampled
    /// steps (the first 10, then every 100th); `None` before one has been measured, which takes
    /// the next `prepare_for_forward` after a synchronised backward.
    pub fn comm_stats(&self) -> Result<Option<CommStats>> {
        let [compute, comm, overlap] = self.reducer.comm_stats().map_err(|m| self.failed("comm_stats", m))?;
        let ns = |v: i64| Duration::from_nanos(v.max(0) as u64);
        Ok((comm > 0).then(|| CommStats {
            backward_compute: ns(compute),
            all_reduce: ns(comm),
            overlap: ns(overlap),
        }))
    }

    fn failed(&self, what: &str, message: String) -> Error {
        Error::c10d(format!("rank {}/{}: Reducer::{what}", self.rank, self.world_size), message)
    }
}
