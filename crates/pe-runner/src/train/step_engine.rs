//! The step engine: what one training step does to the model, and nothing about epochs, data or logs.
//!
//! A step is `accum_steps` micro-batches ([`StepEngine::micro_batch`]): forward under autocast,
//! loss, scaled backward, and for the last one the update (unscale → clip → optimizer → EMA →
//! scaler update), written once in [`StepEngine::step_body`]. Gradient reduction across processes
//! hooks in at two points of the micro-batch (before forward, before backward), as torch DDP does;
//! `pe bench` times this same engine, so a benchmark measures what training runs.
//!
//! With [`EngineConfig::cuda_graph`] that same body is captured once into a CUDA graph and replayed
//! ([`crate::train::graphed_step`]). With a teacher ([`EngineConfig::distill`]) the loss of that
//! same body takes the teacher's term ([`crate::train::teacher`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use pe_models::pretrained::{Adapted, Selection};
use pe_models::{weights, Model, ModelConfig};
use pe_torch::scaler::{GradScaler, GradScalerState};

use crate::config::{Amp, DistillConfig, ExperimentConfig, ModelInit, OptimizerConfig};
use crate::train::amp::Precision;
use crate::train::checkpoint;
use crate::train::ema::Ema;
use crate::train::grad_norm::clip_grad_norm;
use crate::train::graphed_step::GraphedStep;
pub use crate::train::graphed_step::{check_cuda_graph_config, CUDA_GRAPH_WARMUP_STEPS};
use crate::train::init_weights::{InitError, InitialWeights};
use crate::train::loss::{cross_entropy, distillation, soft_target_cross_entropy, with_teacher};
use crate::train::optimizer::{GroupSummary, Optimizer};
use crate::train::param_groups;
use crate::train::teacher::Teacher;

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
    /// [`GraphedStep`]. Needs a CUDA device, `accum_steps == 1`, one process and a fixed batch
    /// shape; anything else is refused with an error naming the setting.
    pub cuda_graph: bool,
    /// A frozen teacher and how its logits enter the loss (`[distill]`).
    pub distill: Option<DistillConfig>,
    /// The side of the training images (what a teacher's input is resized from).
    pub img_size: i64,
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
            distill: config.distill.clone(),
            img_size: config.data.img_size as i64,
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

/// What a micro-batch does besides forward and backward: nothing more (an accumulation step's
/// micro-batches before the last, which keep their gradients local), or the update that ends the
/// step (gradient reduction, then the optimizer at `lr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MicroBatch {
    Accumulate,
    /// `want_grad_norm`: read the global gradient norm back for the report (a device sync).
    Update {
        lr: f64,
        want_grad_norm: bool,
    },
}

pub struct StepEngine {
    vs: nn::VarStore,
    model: Model,
    ema: Option<Ema>,
    precision: Precision,
    device: Device,
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
    graphed: Option<GraphedStep>,
    /// The teacher and its loss settings, when distilling.
    teacher: Option<(Teacher, DistillConfig)>,
}

/// What a whole step leaves on the device; nothing of it has been read by the host.
pub(crate) struct StepOutputs {
    pub loss: Tensor,
    /// The global gradient norm, when it was computed (clipping, or asked for).
    pub grad_norm: Option<Tensor>,
    /// fp16 only: non-zero when the gradients overflowed and the update was skipped.
    pub found_inf: Option<Tensor>,
}

impl StepOutputs {
    /// The host side of the report: the gradient norm only when asked (a device read), and with
    /// fp16 whether the update was skipped (a device read).
    pub fn report(&self, want_grad_norm: bool) -> Result<StepReport> {
        let skipped = match &self.found_inf {
            Some(found_inf) => found_inf.f_double_value(&[])? > 0.0,
            None => false,
        };
        let grad_norm = match &self.grad_norm {
            Some(norm) if want_grad_norm => norm.f_double_value(&[])?,
            _ => f64::NAN,
        };
        Ok(StepReport { grad_norm, skipped })
    }
}

impl StepEngine {
    /// Builds the model (seeded by the caller), converts conv weights to channels_last when asked,
    /// and the optimizer, scaler and EMA that go with it.
    pub fn new(config: &EngineConfig, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let model = config.model.init(vs.root())?;
        let precision = Precision { amp: config.amp, channels_last: config.channels_last };
        if config.channels_last {
            pe_torch::memory_format::convert_conv_weights_(&vs)?;
        }
        param_groups::freeze(&vs, &config.optimizer)?;
        let mut optimizer = Optimizer::new(&vs, &config.optimizer, &config.model)?;
        let graphed =
            if config.cuda_graph { Some(GraphedStep::new(config, device, &mut optimizer)?) } else { None };
        let scaler = (config.amp == Amp::Fp16).then(|| GradScaler::new(true));
        let ema = if config.ema_decay > 0.0 {
            Some(Ema::new(&config.model, &vs, config.ema_decay, config.channels_last)?)
        } else {
            None
        };
        // Built after the student, so the student's initialisation draws what it draws alone.
        let teacher = match &config.distill {
            Some(distill) => {
                if config.cuda_graph {
                    bail!("train.cuda_graph cannot be combined with [distill]: turn it off to train with a teacher");
                }
                let teacher = Teacher::open(distill, &config.model, config.img_size, &precision, device)?;
                Some((teacher, distill.clone()))
            }
            None => None,
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
            graphed,
            teacher,
        })
    }

    /// The teacher, when distilling.
    pub fn teacher(&self) -> Option<&Teacher> {
        self.teacher.as_ref().map(|(teacher, _)| teacher)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn precision(&self) -> &Precision {
        &self.precision
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The optimizer's parameter groups (what trains, at which learning-rate scale and decay).
    pub fn param_groups(&self) -> &[GroupSummary] {
        self.optimizer.groups()
    }

    /// The EMA of the model, when `ema_decay > 0`.
    pub fn ema_model(&self) -> Option<&Model> {
        self.ema.as_ref().map(|ema| &ema.model)
    }

    /// Whether steps are captured into a CUDA graph and replayed.
    pub fn uses_cuda_graph(&self) -> bool {
        self.graphed.is_some()
    }

    /// Whether the CUDA graph has been captured (after the warm-up steps): later steps replay it.
    pub fn cuda_graph_captured(&self) -> bool {
        self.graphed.as_ref().is_some_and(GraphedStep::is_captured)
    }

    /// Installs the cross-process gradient reduction (distributed runs). Refused with
    /// `cuda_graph`: the Reducer's bucket all-reduces are launched from autograd hooks and wait on
    /// the host (Gloo), which a captured graph cannot replay.
    pub fn set_grad_sync(&mut self, sync: Box<dyn GradSync>) -> Result<()> {
        if self.graphed.is_some() {
            bail!(
                "train.cuda_graph = true works in a single process only: distributed gradient \
                 all-reduce (DDP's Reducer hooks) cannot be captured into a CUDA graph; turn \
                 train.cuda_graph off for multi-process runs"
            );
        }
        self.grad_sync = Some(sync);
        Ok(())
    }

    /// One micro-batch of `images` (normalised, mixed, float [B, 3, H, W]): forward and backward,
    /// and for [`MicroBatch::Update`] the update that ends the step, with its report. The loss
    /// comes back as a detached device scalar: nothing here waits for the device unless the report
    /// asks (the gradient norm, fp16's overflow flag).
    pub fn micro_batch(
        &mut self,
        images: &Tensor,
        targets: &Targets,
        kind: MicroBatch,
    ) -> Result<(Tensor, Option<StepReport>)> {
        match kind {
            MicroBatch::Accumulate => Ok((self.forward_backward(images, targets, false)?, None)),
            MicroBatch::Update { lr, want_grad_norm } => {
                let (loss, report) = self.step(images, targets, lr, want_grad_norm)?;
                Ok((loss, Some(report)))
            }
        }
    }

    /// A micro-batch that ends its step ([`MicroBatch::Update`]), eagerly or through the CUDA
    /// graph ([`GraphedStep`]); both run [`StepEngine::step_body`].
    pub fn step(
        &mut self,
        images: &Tensor,
        targets: &Targets,
        lr: f64,
        want_grad_norm: bool,
    ) -> Result<(Tensor, StepReport)> {
        // Queued on the current stream before the step (or a graph's side stream) reads it.
        self.optimizer.set_lr(lr)?;
        let Some(mut graphed) = self.graphed.take() else {
            let out = self.step_body(images, targets, self.clip_grad > 0.0 || want_grad_norm)?;
            self.optimizer.zero_grad()?;
            let report = out.report(want_grad_norm)?;
            return Ok((out.loss, report));
        };
        let result = graphed.step(self, images, targets, want_grad_norm);
        self.graphed = Some(graphed);
        result
    }

    /// The one body of a step that ends in an update, eager or captured: forward and backward with
    /// gradient reduction, then unscale (fp16: the overflow flag stays on the device), clip (and
    /// the global norm, when `compute_norm`), the optimizer at the learning rate last set (skipped
    /// on the device after an overflow), EMA (likewise), scaler update. It reads nothing from the
    /// device, so a CUDA graph can capture it; the gradients are left for the caller to drop.
    pub(crate) fn step_body(
        &mut self,
        images: &Tensor,
        targets: &Targets,
        compute_norm: bool,
    ) -> Result<StepOutputs> {
        let loss = self.forward_backward(images, targets, true)?;
        let grads = self.optimizer.grads();
        let found_inf = match &mut self.scaler {
            Some(scaler) => scaler.unscale_on_device_(&grads)?,
            None => None,
        };
        let grad_norm = if compute_norm { Some(clip_grad_norm(&grads, self.clip_grad)?) } else { None };
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
        Ok(StepOutputs { loss, grad_norm, found_inf })
    }

    /// Drops every gradient (`zero_grad(set_to_none=True)`).
    pub(crate) fn drop_grads(&self) -> Result<()> {
        self.optimizer.zero_grad()
    }

    /// One micro-batch's forward under autocast, loss and backward of `loss / accum_steps` (scaled
    /// under fp16). `reduce` is false for the micro-batches of an accumulation step that precede
    /// the last one: they skip the gradient-reduction hooks (DDP's `no_sync`). Returns the loss,
    /// detached, on the device; its finiteness is recorded on the device.
    fn forward_backward(&mut self, images: &Tensor, targets: &Targets, reduce: bool) -> Result<Tensor> {
        if let (true, Some(sync)) = (reduce, self.grad_sync.as_mut()) {
            sync.before_forward()?;
        }
        let loss = self.loss(images, targets)?;
        let value = loss.f_detach()?;
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

    /// The loss of one micro-batch (forward under autocast), its finiteness recorded on the device.
    /// With a teacher, DeiT's: the class head against the targets, the distillation head (or the
    /// one head) against the teacher's logits on the same batch. Without one, a distilled model
    /// trains its heads' mean (timm's default).
    fn loss(&self, images: &Tensor, targets: &Targets) -> Result<Tensor> {
        let images = self.precision.input(images.shallow_clone())?;
        let base = |logits: &Tensor| match targets {
            Targets::Soft(targets) => soft_target_cross_entropy(logits, targets),
            Targets::Labels(labels) => cross_entropy(logits, labels, self.label_smoothing),
        };
        let loss = match &self.teacher {
            None => {
                let _autocast = self.precision.autocast(self.device)?;
                base(&self.model.forward_t(&images, true))
            }
            Some((teacher, distill)) => {
                let teacher_logits = teacher.logits(&images, &self.precision, self.device)?;
                let heads = {
                    let _autocast = self.precision.autocast(self.device)?;
                    self.model.forward_heads(&images, true)
                };
                let student = heads.dist.as_ref().unwrap_or(&heads.class);
                let term = distillation(student, &teacher_logits, distill.kind, distill.tau);
                with_teacher(base(&heads.class), term, distill.alpha)
            }
        };
        let _ = self.losses_finite.shallow_clone().f_logical_and_(&loss.detach().f_isfinite()?)?;
        Ok(loss)
    }

    /// Whether every loss since the previous call was finite (one device sync). The training loop
    /// asks at logging steps and before every checkpoint, so a checkpoint never holds weights that
    /// a non-finite loss has updated.
    pub fn losses_were_finite(&mut self) -> Result<bool> {
        let finite = bool::try_from(&self.losses_finite)?;
        let _ = self.losses_finite.fill_(1);
        Ok(finite)
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

    /// Starts a new run from `weights` (`model.init`) instead of the fresh initialisation, the EMA
    /// with them; says what was adapted (a new head, a resampled position embedding).
    pub fn start_from(
        &mut self,
        model: &ModelConfig,
        weights: InitialWeights,
        init: &ModelInit,
    ) -> Result<Adapted> {
        let selection = Selection { exclude: &init.init_exclude, head_init_scale: init.head_init_scale };
        let adapted =
            pe_models::pretrained::load(model, &self.vs, &weights.file, weights.tensors, &selection)
                .map_err(InitError::from)?;
        if let Some(ema) = &mut self.ema {
            ema.vs.copy(&self.vs)?;
        }
        Ok(adapted)
    }

    /// Restores what [`StepEngine::write_checkpoint`] wrote; values are copied into the live
    /// variables, so their layout (channels_last) and every shallow clone survive.
    pub fn restore_checkpoint(&mut self, dir: &Path, scaler: Option<&GradScalerState>) -> Result<()> {
        if let Some(graphed) = &mut self.graphed {
            // The optimizer state and the scale are replaced by new tensors below: a graph captured
            // over the old ones would update those.
            graphed.recapture();
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

    /// The EMA's variables by name, sorted (what rank 0 broadcasts beside the model's).
    pub fn ema_named_state(&self) -> Option<Vec<(String, Tensor)>> {
        let ema = self.ema.as_ref()?;
        let mut named: Vec<(String, Tensor)> = ema.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Some(named)
    }

    /// Float buffers that are not trained (BatchNorm running statistics), sorted by name.
    pub fn buffers(&self) -> Vec<Tensor> {
        self.named_state().into_iter().map(|(_, t)| t).filter(|t| !t.requires_grad()).collect()
    }
}
