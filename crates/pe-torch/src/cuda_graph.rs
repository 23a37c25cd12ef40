//! CUDA graphs (`torch.cuda.CUDAGraph` / `torch.cuda.graph`) and the side streams their capture
//! needs, over libtorch's own `at::cuda::CUDAGraph`.
//!
//! Why: an eager training step launches hundreds to thousands of small kernels, and on a fast GPU
//! with a small batch the host cannot launch them as fast as the device runs them. A graph records
//! the launches once and replays them all with one call, so the host cost per step becomes one
//! launch plus the copies of the new batch into the graph's inputs.
//!
//! What a replay does is exactly what the capture recorded, on exactly the tensors it used. So a
//! captured region must have:
//! - **no host syncs** (`.item()`, `double_value`, a `bool` read of a device flag): CUDA refuses
//!   them during capture (the capture fails with an error);
//! - **no host values that change between steps**: a learning rate passed by value, a Python-side
//!   step counter, a shape; they are frozen into the graph. Such values must live in device tensors
//!   that are updated (in place) before each replay;
//! - **fixed tensors**: inputs are copied into the captured tensors before each replay, outputs are
//!   read from the captured tensors after it; memory allocated inside comes from the graph's private
//!   pool and is reused by every replay;
//! - **RNG through the default CUDA generator**: capture registers it, and each replay advances its
//!   philox offset on the device, so dropout draws fresh numbers per replay (and `manual_seed` before
//!   a replay takes effect as in eager mode).
//!
//! Capture must run on a side stream, never the default one (CUDA's rule), and lazily initialised
//! per-stream resources (cuBLAS workspaces, cuDNN plans, optimizer state) must be created by a few
//! eager warm-up iterations *on that same stream* before capture. [`CudaStream`] is such a stream
//! from c10's pool and [`CudaStream::enter`] makes it current the way `torch.cuda.stream` does.
//!
//! On a machine without CUDA every constructor returns "CUDA is not available ...", like
//! [`crate::cuda`].
use std::any::Any;
use std::fmt::Display;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::Device;

use crate::ffi::{GraphHandle, GraphOp, GuardHandle, StreamHandle};
use crate::{Error, Result};

fn cuda_index(device: Device, what: &str) -> Result<i64> {
    match device {
        Device::Cuda(index) => Ok(index as i64),
        other => Err(Error::Invalid(format!("{what} needs a CUDA device, got {other:?}"))),
    }
}

/// A CUDA stream from c10's per-device pool (`torch.cuda.Stream()`): where warm-up and capture run.
/// Keep one for the warm-up iterations and the capture that follows them.
pub struct CudaStream {
    handle: StreamHandle,
    device: Device,
}

impl CudaStream {
    /// A stream of `device` (a `Device::Cuda`) from the pool.
    pub fn from_pool(device: Device) -> Result<Self> {
        let handle = StreamHandle::from_pool(cuda_index(device, "a CUDA stream")?)?;
        Ok(Self { handle, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `s.wait_stream(torch.cuda.current_stream()); with torch.cuda.stream(s): ...`: makes this
    /// stream current on this thread (and its device the current device) after the work already
    /// queued on the current stream. Dropping or [`StreamGuard::exit`]ing the guard makes the
    /// previous stream wait for this one and current again.
    pub fn enter(&self) -> Result<StreamGuard<'_>> {
        Ok(StreamGuard { handle: self.handle.enter()?, _stream: PhantomData })
    }
}

/// While alive, a [`CudaStream`] is this thread's current stream. Thread-bound (c10's current
/// stream is thread-local), so neither `Send` nor `Sync`.
#[must_use = "the previous stream is restored when the guard is dropped"]
pub struct StreamGuard<'a> {
    handle: GuardHandle,
    _stream: PhantomData<&'a CudaStream>,
}

impl StreamGuard<'_> {
    /// Leaves the stream, reporting a failure of the cross-stream wait (dropping only logs it).
    pub fn exit(self) -> Result<()> {
        self.handle.exit()
    }
}

/// A captured CUDA graph with its private memory pool; RAII: dropping it frees the executable
/// graph and returns the pool's memory to the caching allocator.
///
/// One capture per graph: [`CudaGraph::capture`] records, [`CudaGraph::replay`] launches it on the
/// current stream as often as wanted, [`CudaGraph::reset`] drops it so the object can capture anew.
/// Tensors allocated during capture stay valid (and are overwritten by every replay) for as long as
/// the caller holds them; the graph itself holds no tensor.
pub struct CudaGraph {
    handle: GraphHandle,
    device: Device,
    captured: bool,
}

impl CudaGraph {
    /// An empty graph for `device` (a `Device::Cuda`).
    pub fn new(device: Device) -> Result<Self> {
        let handle = GraphHandle::new(cuda_index(device, "a CUDA graph")?)?;
        Ok(Self { handle, device, captured: false })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether a capture succeeded and the graph can be replayed.
    pub fn is_captured(&self) -> bool {
        self.captured
    }

    /// `with torch.cuda.graph(g, stream=stream): body()`: makes `stream` current, waits for the
    /// device to go idle, records everything `body` queues on the device into this graph (nothing is
    /// executed: call [`CudaGraph::replay`] to run it), then restores the previous stream. The
    /// capture is always ended, also when `body` fails or panics, and its error (with the panic's
    /// message) is returned: a host sync inside `body` surfaces here as CUDA's "operation not
    /// permitted when stream is capturing".
    pub fn capture<R, E: Display>(
        &mut self,
        stream: &CudaStream,
        body: impl FnOnce() -> std::result::Result<R, E>,
    ) -> Result<R> {
        if self.captured {
            return Err(Error::Invalid("this CUDA graph already holds a capture; reset() it first".into()));
        }
        if stream.device != self.device {
            return Err(Error::Invalid(format!(
                "capture stream is on {:?}, the graph on {:?}",
                stream.device, self.device
            )));
        }
        let guard = stream.enter()?;
        self.handle.run(GraphOp::CaptureBegin)?;
        let outcome = catch_unwind(AssertUnwindSafe(body));
        let ended = self.handle.run(GraphOp::CaptureEnd);
        let exited = guard.exit();
        let value = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => return Err(Error::Invalid(format!("during CUDA graph capture: {e:#}"))),
            Err(panic) => {
                return Err(Error::Invalid(format!(
                    "panic during CUDA graph capture: {}",
                    panic_message(panic.as_ref())
                )))
            }
        };
        ended.map_err(|e| Error::Invalid(format!("ending the CUDA graph capture: {e}")))?;
        exited?;
        self.captured = true;
        Ok(value)
    }

    /// Launches the captured work on the current stream of the graph's device (asynchronously).
    pub fn replay(&self) -> Result<()> {
        if !self.captured {
            return Err(Error::Invalid("replay of a CUDA graph that holds no capture".into()));
        }
        self.handle.run(GraphOp::Replay)
    }

    /// Drops the capture and its private pool now; the graph can then capture again.
    pub fn reset(&mut self) -> Result<()> {
        self.handle.run(GraphOp::Reset)?;
        // libtorch's CUDAGraph refuses a second capture on one object: start from a fresh one.
        self.handle = GraphHandle::new(cuda_index(self.device, "a CUDA graph")?)?;
        self.captured = false;
        Ok(())
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
