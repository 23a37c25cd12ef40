//! The step engine: what one training step does to the model, and nothing about epochs, data or logs.
//!
//! A step is `accum_steps` calls of [`StepEngine::forward_backward`] (forward under autocast, loss,
//! scaled backward) followed by one [`StepEngine::optimizer_step`] (unscale → clip → optimizer →
//! EMA → scaler update → zero grads). Gradient reduction across processes hooks in at two points
//! of the micro-batch (before forward, before backward), as torch DDP does; `pe bench` times this
//! same engine, so a benchmark measures what training runs.
//!
//! With [`EngineConfig::cuda_graph`] the whole step (forward, backward, unscale, clip, optimizer,
//! EMA, scaler update) is captured once into a CUDA graph and replayed; see [`StepEngine::step`]
//! for the rules and the recipe.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use pe_models::{weights, Model, ModelConfig};
use pe_torch::cuda_graph::{CudaGraph, CudaStream};
use pe_torch::scaler::{GradScaler, GradScalerState};

use crate::amp::Precision;
use crate::checkpoint;
use crate::config::{Amp, ExperimentConfig, OptimizerConfig};
use crate::ema::Ema;
use crate::grad_norm::clip_grad_norm;
use crate::loss::{cross_entropy, soft_target_cross_entropy};
use crate::optimizer::Optimizer;

/// Everything that decides what a step computes, separable from a whole experiment so that
/// `pe bench` can build the engine for a bare model preset.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: ModelConfig,
    pub optimizer: OptimizerConfig,
    pub amp: Amp,
    pub channels_last: bool,
    pub ema_decay: f64,
    pub accum_steps: usize,
    pub label_smoothing: f64,
    /// Capture the training step into a CUDA graph and replay it (`train.cuda_graph`); see
    /// [`StepEngine::step`]. Needs a CUDA device, `accum_steps == 1`, one process and a fixed
    /// batch shape; anything else is refused with an error naming the setting.
    pub cuda_graph: bool,
}

impl EngineConfig {
    pub fn from_experiment(config: &ExperimentConfig) -> Self {
        Self {
            model: config.model.clone(),
            optimizer: config.optimizer.clone(),
            amp: config.train.amp,
            channels_last: config.train.channels_last,
            ema_decay: config.train.ema_decay,
            accum_steps: config.train.accum_steps,
            label_smoothing: config.data.label_smoothing,
            cuda_graph: config.train.cuda_graph,
        }
    }
}

/// What a micro-batch is trained against: class indices, or Mixup/CutMix soft targets [B, K].
pub enum Targets {
    Labels(Tensor),
    Soft(Tensor),
}

/// Where cross-process gradient reduction plugs into a micro-batch (torch DDP's Reducer).
/// Micro-batches that must not reduce (accumulation, `no_sync`) skip both calls.
pub trait GradSync {
    /// Before the forward of a reducing micro-batch (also where DDP broadcasts buffers).
    fn before_forward(&mut self) -> Result<()>;
    /// After the forward, before backward: arms the hooks that all-reduce gradient buckets.
    fn before_backward(&mut self, loss: &Tensor) -> Result<()>;
    /// The share of gradient all-reduce time hidden behind backward, once measured.
    fn hidden_share(&self) -> Result<Option<f64>>;
}

/// The result of an optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Global gradient L2 norm (after unscaling, before clipping), NaN unless asked for.
    pub grad_norm: f64,
    /// fp16 gradients overflowed: the update was skipped (the scaler shrinks its scale).
    pub skipped: bool,
}

pub struct StepEngine {
    pub vs: nn::VarStore,
    pub model: Model,
    pub ema: Option<Ema>,
    pub precision: Precision,
    pub device: Device,
    optimizer: Optimizer,
    scaler: Option<GradScaler>,
    accum_steps: usize,
    label_smoothing: f64,
    clip_grad: f64,
    grad_sync: Option<Box<dyn GradSync>>,
    /// Device-side "every loss since the last [`StepEngine::losses_were_finite`] was finite":
    /// reading each loss on the host would cost a device sync per micro-batch. Updated in place
    /// (a captured graph keeps updating the very tensor it captured).
    losses_finite: Tensor,
    /// The captured step, when `cuda_graph` is on.
    graph: Option<GraphStep>,
}

/// Eager steps run on the capture stream before the step is captured: cuBLAS/cuDNN workspaces,
/// the optimizer's state and the loss scale's device copy must all exist before capture, and
/// warm-up on the capture stream is what `torch.cuda.graph`'s documentation prescribes (3 steps).
pub const CUDA_GRAPH_WARMUP_STEPS: usize = 3;

/// The CUDA-graph state of an engine: the side stream of warm-up and capture, then the graph with
/// its static input and output tensors.
struct GraphStep {
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

/// What a whole step leaves on the device; nothing of it has been read by the host.
struct StepOutputs {
    loss: Tensor,
    grad_norm: Tensor,
    /// fp16 only: non-zero when the gradients overflowed and the update was skipped.
    found_inf: Option<Tensor>,
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

impl StepEngine {
    /// Builds the model (seeded by the caller), converts conv weights to channels_last when asked,
    /// and the optimizer, scaler and EMA that go with it.
    pub fn new(config: &EngineConfig, device: Device) -> Result<Self> {
        if config.cuda_graph {
            check_cuda_graph_config(config, device)?;
        }
        let vs = nn::VarStore::new(device);
        let model = config.model.init(vs.root())?;
        let precision = Precision { amp: config.amp, channels_last: config.channels_last };
        if config.channels_last {
            pe_torch::memory_format::convert_conv_weights_(&vs)?;
        }
        let mut optimizer = Optimizer::new(&vs, &config.optimizer)?;
        let graph = if config.cuda_graph {
            // A host learning rate would be baked into the graph: the kernels read it on the device.
            optimizer.use_device_lr(device)?;
            let stream = CudaStream::from_pool(device)?;
            Some(GraphStep { stream, warmup_left: CUDA_GRAPH_WARMUP_STEPS, captured: None })
        } else {
            None
        };
        let scaler = (config.amp == Amp::Fp16).then(|| GradScaler::new(true));
        let ema = if config.ema_decay > 0.0 {
            Some(Ema::new(&config.model, &vs, config.ema_decay, config.channels_last)?)
        } else {
            None
        };
        Ok(Self {
            vs,
            model,
            ema,
            precision,
            device,
            optimizer,
            scaler,
            accum_steps: config.accum_steps,
            label_smoothing: config.label_smoothing,
            clip_grad: config.optimizer.clip_grad,
            grad_sync: None,
            losses_finite: Tensor::from(true).to_device(device),
            graph,
        })
    }

    /// Whether steps are captured into a CUDA graph and replayed.
    pub fn uses_cuda_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Whether the CUDA graph has been captured (after the warm-up steps): later steps replay it.
    pub fn cuda_graph_captured(&self) -> bool {
        self.graph.as_ref().is_some_and(|g| g.captured.is_some())
    }

    /// Installs the cross-process gradient reduction (distributed runs). Refused with
    /// `cuda_graph`: the Reducer's bucket all-reduces are launched from autograd hooks and wait on
    /// the host (Gloo), which a captured graph cannot replay.
    pub fn set_grad_sync(&mut self, sync: Box<dyn GradSync>) -> Result<()> {
        if self.graph.is_some() {
            bail!(
                "train.cuda_graph = true works in a single process only: distributed gradient \
                 all-reduce (DDP's Reducer hooks) cannot be captured into a CUDA graph; turn \
                 train.cuda_graph off for multi-process runs"
            );
        }
        self.grad_sync = Some(sync);
        Ok(())
    }

    fn refuse_under_graph(&self, what: &str) -> Result<()> {
        if self.graph.is_some() {
            bail!("{what} is not available with cuda_graph: the engine steps through StepEngine::step");
        }
        Ok(())
    }

    /// The loss of one micro-batch (forward under autocast), its finiteness recorded on the device.
    fn loss(&self, images: &Tensor, targets: &Targets) -> Result<Tensor> {
        let images = self.precision.input(images.shallow_clone())?;
        let logits = {
            let _autocast = self.precision.autocast(self.device)?;
            self.model.forward_t(&images, true)
        };
        let loss = match targets {
            Targets::Soft(targets) => soft_target_cross_entropy(&logits, targets),
            Targets::Labels(labels) => cross_entropy(&logits, labels, self.label_smoothing),
        };
        let _ = self.losses_finite.shallow_clone().f_logical_and_(&loss.detach().f_isfinite()?)?;
        Ok(loss)
    }

    /// One micro-batch: forward under autocast, loss, backward of `loss / accum_steps` (scaled
    /// under fp16). `reduce` is false for the micro-batches of an accumulation step that precede
    /// the last one. `images` are normalised (and mixed) float [B, 3, H, W]. Returns the loss, a
    /// detached scalar still on the device: nothing here waits for the device, so a GPU can run
    /// ahead of the host. Its finiteness is recorded on the device for `losses_were_finite`.
    pub fn forward_backward(&mut self, images: &Tensor, targets: &Targets, reduce: bool) -> Result<Tensor> {
        self.refuse_under_graph("forward_backward")?;
        if let (true, Some(sync)) = (reduce, self.grad_sync.as_mut()) {
            sync.before_forward()?;
        }
        let loss = self.loss(images, targets)?;
        let value = loss.detach();
        if let (true, Some(sync)) = (reduce, self.grad_sync.as_mut()) {
            sync.before_backward(&loss)?;
        }
        // Without accumulation the division would be one more kernel forward and backward.
        let scaled = if self.accum_steps > 1 { loss / self.accum_steps as f64 } else { loss };
        // f_backward: a failed gradient all-reduce (a rank died) surfaces here as an error.
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(&scaled).f_backward()?,
            None => scaled.f_backward()?,
        }
        Ok(value)
    }

    /// Whether every loss since the previous call was finite (one device sync). The training loop
    /// asks at logging steps and before every checkpoint, so a checkpoint never holds weights that
    /// a non-finite loss has updated.
    pub fn losses_were_finite(&mut self) -> Result<bool> {
        let finite = bool::try_from(&self.losses_finite)?;
        let _ = self.losses_finite.fill_(1);
        Ok(finite)
    }

    /// Unscale, clip, step at `lr` (unless fp16 overflowed), EMA, scaler update, zero grads.
    /// Clipping stays on the device; reading the global gradient norm costs a host sync, so it
    /// is read only when `want_grad_norm`.
    pub fn optimizer_step(&mut self, lr: f64, want_grad_norm: bool) -> Result<StepReport> {
        self.refuse_under_graph("optimizer_step")?;
        let grads = self.optimizer.grads();
        let skipped = match &mut self.scaler {
            Some(scaler) => scaler.unscale_(&grads)?,
            None => false,
        };
        let clip = self.clip_grad;
        let grad_norm = if clip > 0.0 || want_grad_norm { Some(clip_grad_norm(&grads, clip)?) } else { None };
        if !skipped {
            self.optimizer.step(lr)?;
            if let Some(ema) = &mut self.ema {
                ema.update()?;
            }
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update()?;
        }
        self.optimizer.zero_grad()?;
        let grad_norm = match grad_norm {
            Some(norm) if want_grad_norm => norm.double_value(&[]),
            _ => f64::NAN,
        };
        Ok(StepReport { grad_norm, skipped })
    }

    /// The last (or only) micro-batch of a step and the update: [`StepEngine::forward_backward`]
    /// with gradient reduction, then [`StepEngine::optimizer_step`] at `lr`. Returns the loss (a
    /// device scalar) and the report.
    ///
    /// With `cuda_graph` the step is instead, as PyTorch's whole-network capture recipe:
    /// 1. the first [`CUDA_GRAPH_WARMUP_STEPS`] steps run eagerly on a side stream (they train on
    ///    their batches like any step) and set gradients to none after each;
    /// 2. the next step copies its batch into static input tensors, captures forward, backward,
    ///    unscale (fp16), clipping, the optimizer, EMA and the scaler update into one graph over
    ///    them (gradients are none before capture, so backward allocates them from the graph's pool
    ///    and every replay overwrites them: they are never zeroed inside), then replays it;
    /// 3. every later step copies its batch into the static inputs, writes `lr` into the device
    ///    tensor the fused optimizer kernels read, and replays.
    ///
    /// Inside the graph nothing reads the device from the host: the learning rate and the
    /// optimizer's step counts are device tensors, an fp16 overflow skips the update (and EMA) on
    /// the device, clipping and the loss-finite flag stay on the device, autocast's weight-cast
    /// cache is off (each cast is recomputed inside the graph), and dropout/drop-path draw from the
    /// default CUDA generator, which the graph advances on every replay (so `tch::manual_seed`
    /// before a step acts as in eager mode). The host reads the gradient norm only when
    /// `want_grad_norm`, and with fp16 the overflow flag after each step (as the eager fp16 step
    /// does). Every batch must have the captured shape and dtype (training drops the last
    /// incomplete batch); a different one is an error. Warm-up and replays use the same
    /// computation, so a run's numbers do not change at the capture.
    pub fn step(
        &mut self,
        images: &Tensor,
        targets: &Targets,
        lr: f64,
        want_grad_norm: bool,
    ) -> Result<(Tensor, StepReport)> {
        let Some(mut graph) = self.graph.take() else {
            let loss = self.forward_backward(images, targets, true)?;
            let report = self.optimizer_step(lr, want_grad_norm)?;
            return Ok((loss, report));
        };
        let result = self.graph_step(&mut graph, images, targets, lr, want_grad_norm);
        self.graph = Some(graph);
        result
    }

    fn graph_step(
        &mut self,
        graph: &mut GraphStep,
        images: &Tensor,
        targets: &Targets,
        lr: f64,
        want_grad_norm: bool,
    ) -> Result<(Tensor, StepReport)> {
        // Queued on the current stream before the side stream or the replay reads it.
        self.optimizer.set_lr(lr)?;
        let _no_cast_cache = pe_torch::autocast::disable_cache()?;
        if graph.warmup_left > 0 {
            let entered = graph.stream.enter()?;
            let out = self.whole_step(images, targets);
            let cleared = self.optimizer.zero_grad();
            entered.exit()?;
            let (out, ()) = (out?, cleared?);
            graph.warmup_left -= 1;
            let report = read_report(&out, want_grad_norm)?;
            return Ok((out.loss, report));
        }
        if graph.captured.is_none() {
            graph.captured = Some(self.capture(&graph.stream, images, targets)?);
        }
        let captured = graph.captured.as_ref().context("the captured CUDA graph is missing")?;
        if images.size() != captured.images.size() || images.kind() != captured.images.kind() {
            bail!(
                "train.cuda_graph = true needs a fixed batch shape: the graph was captured for images \
                 {}, this batch has {}",
                describe(&captured.images),
                describe(images)
            );
        }
        let same_targets = matches!(
            (targets, &captured.targets),
            (Targets::Labels(_), Targets::Labels(_)) | (Targets::Soft(_), Targets::Soft(_))
        ) && targets.tensor().size() == captured.targets.tensor().size()
            && targets.tensor().kind() == captured.targets.tensor().kind();
        if !same_targets {
            bail!(
                "train.cuda_graph = true needs fixed targets: the graph was captured for {}, this batch \
                 has {}",
                captured.targets.describe(),
                targets.describe()
            );
        }
        tch::no_grad(|| -> Result<()> {
            captured.images.shallow_clone().f_copy_(images)?;
            captured.targets.tensor().shallow_clone().f_copy_(targets.tensor())?;
            Ok(())
        })?;
        captured.graph.replay()?;
        let report = read_report(&captured.out, want_grad_norm)?;
        // A copy: the next replay overwrites the captured loss while the caller may still hold it.
        Ok((captured.out.loss.f_detach_copy()?, report))
    }

    /// Copies the batch into new static tensors and captures one whole step over them.
    fn capture(&mut self, stream: &CudaStream, images: &Tensor, targets: &Targets) -> Result<Captured> {
        let images = images.f_detach_copy()?;
        let targets = targets.copy();
        // Gradients none: backward allocates them inside the capture, from the graph's pool.
        self.optimizer.zero_grad()?;
        let mut graph = CudaGraph::new(self.device)?;
        let out = graph.capture(stream, || self.whole_step(&images, &targets)).map_err(|e| {
            let hint = if e.to_string().contains("legacy stream") {
                // Seen on an H200: a parameter copy kept with gradients enabled made backward run
                // its gradient accumulators on the default stream.
                "; a tensor computed from the parameters with gradients enabled is still alive \
                 outside the step (detach it), so their gradient accumulators run on the default stream"
            } else {
                ""
            };
            anyhow::anyhow!(
                "capturing the training step into a CUDA graph (train.cuda_graph = true): {e}{hint}"
            )
        })?;
        Ok(Captured { graph, images, targets, out })
    }

    /// One whole step with no host read of a device value, so a CUDA graph can capture it:
    /// forward, backward, unscale (fp16, flag kept on the device), clip, optimizer at the device
    /// learning rate (skipped on the device after an overflow), EMA (likewise), scaler update.
    /// Gradients are left in place (not zeroed: set to none between eager steps by the caller).
    fn whole_step(&mut self, images: &Tensor, targets: &Targets) -> Result<StepOutputs> {
        let loss = self.loss(images, targets)?;
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(&loss).f_backward()?,
            None => loss.f_backward()?,
        }
        let grads = self.optimizer.grads();
        let found_inf = match &mut self.scaler {
            Some(scaler) => scaler.unscale_on_device_(&grads)?,
            None => None,
        };
        let grad_norm = clip_grad_norm(&grads, self.clip_grad)?;
        self.optimizer.step_unless_found_inf(found_inf.as_ref())?;
        if let Some(ema) = &mut self.ema {
            match &found_inf {
                Some(skip) => ema.update_unless(skip)?,
                None => ema.update()?,
            }
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update()?;
        }
        Ok(StepOutputs { loss: loss.f_detach()?, grad_norm, found_inf })
    }

    /// The share of gradient all-reduce time hidden behind backward (distributed runs, once
    /// measured: DDP samples the first 10 steps, then every 100th).
    pub fn allreduce_hidden_share(&self) -> Result<Option<f64>> {
        self.grad_sync.as_ref().map_or(Ok(None), |sync| sync.hidden_share())
    }

    /// The loss scale (fp16 only).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler.as_ref().map(GradScaler::scale_value)
    }

    pub fn scaler_state(&self) -> Option<GradScalerState> {
        self.scaler.as_ref().map(GradScaler::state)
    }

    /// Writes model, EMA and optimizer state into a checkpoint folder. Every tensor is stored on
    /// the CPU in the standard contiguous layout whatever the training layout (channels_last), so
    /// PyTorch and `pe eval` read the files as they are.
    pub fn write_checkpoint(&self, dir: &Path) -> Result<()> {
        weights::save(&self.vs, &dir.join(checkpoint::MODEL))?;
        if let Some(ema) = &self.ema {
            weights::save(&ema.vs, &dir.join(checkpoint::EMA))?;
        }
        let state: Vec<(String, Tensor)> = self
            .optimizer
            .state_tensors()
            .into_iter()
            .map(|(name, t)| (name, t.to_device(Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&state, dir.join(checkpoint::OPTIMIZER))
            .with_context(|| format!("writing {}", dir.join(checkpoint::OPTIMIZER).display()))?;
        Ok(())
    }

    /// Restores what [`StepEngine::write_checkpoint`] wrote; values are copied into the live
    /// variables, so their layout (channels_last) and every shallow clone survive.
    pub fn restore_checkpoint(&mut self, dir: &Path, scaler: Option<&GradScalerState>) -> Result<()> {
        if let Some(graph) = &mut self.graph {
            // The optimizer state and the scale are replaced by new tensors below: a graph captured
            // over the old ones would update those. Warm up and capture again.
            graph.captured = None;
            graph.warmup_left = CUDA_GRAPH_WARMUP_STEPS;
        }
        weights::load(&self.vs, &dir.join(checkpoint::MODEL))?;
        if let Some(ema) = &self.ema {
            weights::load(&ema.vs, &dir.join(checkpoint::EMA))?;
        }
        let optimizer_file = dir.join(checkpoint::OPTIMIZER);
        let tensors = Tensor::read_safetensors(&optimizer_file)
            .with_context(|| format!("reading {}", optimizer_file.display()))?;
        self.optimizer.load_state_tensors(tensors)?;
        if let (Some(live), Some(state)) = (&mut self.scaler, scaler) {
            live.load_state(state)?;
        }
        Ok(())
    }

    /// Trainable parameters by name, sorted: the same order in every process (what gradient
    /// reduction buckets; a VarStore's own order is a hash map's).
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_state().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    /// Parameters and buffers (BatchNorm statistics) by name: what rank 0 broadcasts.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// Float buffers that are not trained (BatchNorm running statistics), sorted by name.
    pub fn buffers(&self) -> Vec<Tensor> {
        self.named_state().into_iter().map(|(_, t)| t).filter(|t| !t.requires_grad()).collect()
    }
}

/// The host side of a step's report: the gradient norm only when asked (a device read), and with
/// fp16 whether the update was skipped (a device read, as in the eager fp16 step).
fn read_report(out: &StepOutputs, want_grad_norm: bool) -> Result<StepReport> {
    let skipped = match &out.found_inf {
        Some(found_inf) => found_inf.f_double_value(&[])? > 0.0,
        None => false,
    };
    let grad_norm = if want_grad_norm { out.grad_norm.f_double_value(&[])? } else { f64::NAN };
    Ok(StepReport { grad_norm, skipped })
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
