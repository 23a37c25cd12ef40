//! The training step as a CUDA graph (`train.cuda_graph`): the engine's one step body
//! ([`StepEngine::step_body`]), run eagerly on a side stream for a few warm-up steps, then captured
//! once and replayed for every later batch, as PyTorch's whole-network capture recipe does. What
//! a graph cannot run (no CUDA, accumulation, another batch shape) is refused here, by name.

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use pe_torch::cuda_graph::{CudaGraph, CudaStream};

use crate::train::optimizer::Optimizer;
use crate::train::step_engine::{EngineConfig, StepEngine, StepOutputs, StepReport, Targets};

/// Eager steps run on the capture stream before the step is captured: cuBLAS/cuDNN workspaces,
/// the optimizer's state and the loss scale's device copy must all exist before capture, and
/// warm-up on the capture stream is what `torch.cuda.graph`'s documentation prescribes (3 steps).
pub const CUDA_GRAPH_WARMUP_STEPS: usize = 3;

/// The side stream of warm-up and capture, then the graph with its static input and output tensors.
///
/// A step goes:
/// 1. the first [`CUDA_GRAPH_WARMUP_STEPS`] steps run the body eagerly on the side stream (they
///    train on their batches like any step) and drop the gradients after each;
/// 2. the next step copies its batch into static input tensors, captures the body over them
///    (gradients are none before capture, so backward allocates them from the graph's pool and
///    every replay overwrites them: they are never zeroed inside), then replays it;
/// 3. every later step copies its batch into the static inputs and replays; the learning rate is
///    the device tensor the fused optimizer kernels read, set before each step.
///
/// Inside the graph nothing reads the device from the host: the learning rate and the optimizer's
/// step counts are device tensors, an fp16 overflow skips the update (and EMA) on the device,
/// clipping and the loss-finite flag stay on the device, autocast's weight-cast cache is off (each
/// cast is recomputed inside the graph), and dropout/drop-path draw from the default CUDA
/// generator, which the graph advances on every replay (so `tch::manual_seed` before a step acts
/// as in eager mode). The host reads the gradient norm only when asked, and with fp16 the overflow
/// flag after each step (as the eager fp16 step does). Every batch must have the captured shape and
/// dtype (training drops the last incomplete batch); a different one is an error.
pub struct GraphedStep {
    stream: CudaStream,
    warmup_left: usize,
    captured: Option<Captured>,
}

/// A captured step: the batch is copied into `images`/`targets` before each replay, and `out`
/// holds what the replay computed (overwritten by the next one).
struct Captured {
    graph: CudaGraph,
    images: Tensor,
    targets: Targets,
    out: StepOutputs,
}

impl GraphedStep {
    /// Refuses what a graph cannot run, and makes the optimizer read its learning rate from a
    /// device tensor (a host value would be baked into the graph).
    pub fn new(config: &EngineConfig, device: Device, optimizer: &mut Optimizer) -> Result<Self> {
        check_cuda_graph_config(config, device)?;
        optimizer.use_device_lr(device)?;
        let stream = CudaStream::from_pool(device)?;
        Ok(Self { stream, warmup_left: CUDA_GRAPH_WARMUP_STEPS, captured: None })
    }

    pub fn is_captured(&self) -> bool {
        self.captured.is_some()
    }

    /// Forgets the graph (the engine's state tensors were replaced, e.g. by a restore): warm up
    /// and capture again.
    pub fn recapture(&mut self) {
        self.captured = None;
        self.warmup_left = CUDA_GRAPH_WARMUP_STEPS;
    }

    /// One step of `engine` through the graph: warm-up, capture or replay (see [`GraphedStep`]).
    pub fn step(
        &mut self,
        engine: &mut StepEngine,
        images: &Tensor,
        targets: &Targets,
        want_grad_norm: bool,
    ) -> Result<(Tensor, StepReport)> {
        let _no_cast_cache = pe_torch::autocast::disable_cache()?;
        if self.warmup_left > 0 {
            let entered = self.stream.enter()?;
            let out = engine.step_body(images, targets, true);
            let cleared = engine.drop_grads();
            entered.exit()?;
            let (out, ()) = (out?, cleared?);
            self.warmup_left -= 1;
            let report = out.report(want_grad_norm)?;
            return Ok((out.loss, report));
        }
        if self.captured.is_none() {
            self.captured = Some(capture(engine, &self.stream, images, targets)?);
        }
        let captured = self.captured.as_ref().context("the captured CUDA graph is missing")?;
        captured.check_same_shapes(images, targets)?;
        tch::no_grad(|| -> Result<()> {
            captured.images.shallow_clone().f_copy_(images)?;
            captured.targets.tensor().shallow_clone().f_copy_(targets.tensor())?;
            Ok(())
        })?;
        captured.graph.replay()?;
        let report = captured.out.report(want_grad_norm)?;
        // A copy: the next replay overwrites the captured loss while the caller may still hold it.
        Ok((captured.out.loss.f_detach_copy()?, report))
    }
}

impl Captured {
    fn check_same_shapes(&self, images: &Tensor, targets: &Targets) -> Result<()> {
        if images.size() != self.images.size() || images.kind() != self.images.kind() {
            bail!(
                "train.cuda_graph = true needs a fixed batch shape: the graph was captured for images \
                 {}, this batch has {}",
                describe(&self.images),
                describe(images)
            );
        }
        let same_targets = matches!(
            (targets, &self.targets),
            (Targets::Labels(_), Targets::Labels(_)) | (Targets::Soft(_), Targets::Soft(_))
        ) && targets.tensor().size() == self.targets.tensor().size()
            && targets.tensor().kind() == self.targets.tensor().kind();
        if !same_targets {
            bail!(
                "train.cuda_graph = true needs fixed targets: the graph was captured for {}, this batch \
                 has {}",
                self.targets.describe(),
                targets.describe()
            );
        }
        Ok(())
    }
}

/// Copies the batch into new static tensors and captures one step body over them.
fn capture(
    engine: &mut StepEngine,
    stream: &CudaStream,
    images: &Tensor,
    targets: &Targets,
) -> Result<Captured> {
    let images = images.f_detach_copy()?;
    let targets = targets.copy();
    // Gradients none: backward allocates them inside the capture, from the graph's pool.
    engine.drop_grads()?;
    let mut graph = CudaGraph::new(engine.device())?;
    let out = graph.capture(stream, || engine.step_body(&images, &targets, true)).map_err(|e| {
        let hint = if e.to_string().contains("legacy stream") {
            // Seen on an H200: a parameter copy kept with gradients enabled made backward run its
            // gradient accumulators on the default stream.
            "; a tensor computed from the parameters with gradients enabled is still alive outside \
             the step (detach it), so their gradient accumulators run on the default stream"
        } else {
            ""
        };
        anyhow::anyhow!("capturing the training step into a CUDA graph (train.cuda_graph = true): {e}{hint}")
    })?;
    Ok(Captured { graph, images, targets, out })
}

impl Targets {
    fn tensor(&self) -> &Tensor {
        match self {
            Targets::Labels(t) | Targets::Soft(t) => t,
        }
    }

    fn copy(&self) -> Targets {
        match self {
            Targets::Labels(t) => Targets::Labels(t.copy()),
            Targets::Soft(t) => Targets::Soft(t.copy()),
        }
    }

    fn describe(&self) -> String {
        let (kind, t) = match self {
            Targets::Labels(t) => ("labels", t),
            Targets::Soft(t) => ("soft targets", t),
        };
        format!("{kind} {:?} {:?}", t.size(), t.kind())
    }
}

fn describe(t: &Tensor) -> String {
    format!("{:?} {:?}", t.size(), t.kind())
}

/// Refuses, naming the setting and why, the configurations a captured step cannot run correctly.
pub fn check_cuda_graph_config(config: &EngineConfig, device: Device) -> Result<()> {
    if !matches!(device, Device::Cuda(_)) {
        bail!(
            "cuda_graph (train.cuda_graph / pe bench --cuda-graph) needs a CUDA device, got {device:?}: \
             a CUDA graph captures GPU kernels"
        );
    }
    if config.accum_steps != 1 {
        bail!(
            "cuda_graph (train.cuda_graph) needs train.accum_steps = 1, got {}: the captured step is \
             one forward/backward followed by the update",
            config.accum_steps
        );
    }
    Ok(())
}
