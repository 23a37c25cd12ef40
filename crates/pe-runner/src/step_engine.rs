//! The step engine: what one training step does to the model, and nothing about epochs, data or logs.
//!
//! A step is `accum_steps` calls of [`StepEngine::forward_backward`] (forward under autocast, loss,
//! scaled backward) followed by one [`StepEngine::optimizer_step`] (unscale → clip → optimizer →
//! EMA → scaler update → zero grads). Gradient reduction across processes hooks in at two points
//! of the micro-batch (before forward, before backward), as torch DDP does; `pe bench` times this
//! same engine, so a benchmark measures what training runs.

use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use pe_models::{weights, Model, ModelConfig};
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
    /// reading each loss on the host would cost a device sync per micro-batch.
    losses_finite: Tensor,
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
        let optimizer = Optimizer::new(&vs, &config.optimizer)?;
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
        })
    }

    /// Installs the cross-process gradient reduction (distributed runs).
    pub fn set_grad_sync(&mut self, sync: Box<dyn GradSync>) {
        self.grad_sync = Some(sync);
    }

    /// One micro-batch: forward under autocast, loss, backward of `loss / accum_steps` (scaled
    /// under fp16). `reduce` is false for the micro-batches of an accumulation step that precede
    /// the last one. `images` are normalised (and mixed) float [B, 3, H, W]. Returns the loss, a
    /// detached scalar still on the device: nothing here waits for the device, so a GPU can run
    /// ahead of the host. Its finiteness is recorded on the device for `losses_were_finite`.
    pub fn forward_backward(&mut self, images: &Tensor, targets: &Targets, reduce: bool) -> Result<Tensor> {
        let images = self.precision.input(images.shallow_clone())?;
        let sync = if reduce { self.grad_sync.as_mut() } else { None };
        let sync = match sync {
            Some(sync) => {
                sync.before_forward()?;
                Some(sync)
            }
            None => None,
        };
        let logits = {
            let _autocast = self.precision.autocast(self.device)?;
            self.model.forward_t(&images, true)
        };
        let loss = match targets {
            Targets::Soft(targets) => soft_target_cross_entropy(&logits, targets),
            Targets::Labels(labels) => cross_entropy(&logits, labels, self.label_smoothing),
        };
        let value = loss.detach();
        self.losses_finite = self.losses_finite.logical_and(&value.isfinite());
        if let Some(sync) = sync {
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
