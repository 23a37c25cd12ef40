//! Experiment configuration: the typed sections of a TOML recipe and their validation.
//!
//! Loading (inheritance, overrides, error locations) lives in [`load`]; this module only says
//! what a valid experiment is.

pub mod load;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use pe_data::DataConfig;
use pe_models::ModelConfig;

pub use crate::device::DeviceChoice;

pub use load::{load_experiment, resolved_with_overrides, ConfigError, Experiment};

/// A fully resolved experiment, as written to `runs/<name>/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name: the folder under `logging.runs_dir`. Defaults to the recipe's file stem.
    #[serde(default)]
    pub name: String,
    pub model: ModelConfig,
    /// The weights the run starts from. A recipe writes these keys in `[model]` (`init`,
    /// `init_exclude`, `init_ema`, `head_init_scale`); the loader keeps them in a table of their
    /// own because `[model]` proper is the model crate's architecture definition.
    #[serde(default, skip_serializing_if = "ModelInit::is_unset")]
    pub model_init: ModelInit,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Training with a teacher (DeiT's distillation); absent: no teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// How the teacher's logits enter the loss (DeiT's `distillation_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DistillKind {
    /// KL divergence to the teacher's distribution at temperature `tau`, scaled by τ².
    Soft,
    /// Cross-entropy on the teacher's top class.
    Hard,
}

/// `[distill]`: a frozen teacher whose logits on each (mixed) training batch join the loss as
/// `(1 − alpha)·CE(class head, targets) + alpha·distillation(dist head, teacher)` (DeiT's
/// `DistillationLoss`; a model without a distillation token uses its one head for both terms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// A run folder (its best checkpoint, else its last), a checkpoint folder, or a safetensors
    /// file (torchvision / timm names), as `model.init` takes them.
    pub teacher: PathBuf,
    /// The teacher's registry model; a run or checkpoint folder records its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_model: Option<String>,
    /// Take the teacher checkpoint's EMA weights.
    #[serde(default)]
    pub teacher_ema: bool,
    /// The image side the teacher sees (the batch is resized to it, bilinear, antialiased); 0:
    /// its own size (a ViT's `img_size`, for a ResNet the batch's).
    #[serde(default)]
    pub teacher_img_size: usize,
    pub kind: DistillKind,
    /// Weight of the teacher's term (DeiT's default 0.5).
    #[serde(default = "half")]
    pub alpha: f64,
    /// Temperature of the soft kind (DeiT's default 1).
    #[serde(default = "one")]
    pub tau: f64,
}

fn half() -> f64 {
    0.5
}

/// Where a run's first weights come from (see `train/init_weights.rs`): the `[model] init*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelInit {
    /// A run folder (its best checkpoint, else its last), a checkpoint folder, or a safetensors
    /// file with this workspace's (= torchvision's / timm's) parameter names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Name patterns (`*` = any run of characters) of tensors that keep their fresh
    /// initialisation: absent from the weights, or present and left out on purpose.
    pub init_exclude: Vec<String>,
    /// Take the checkpoint's EMA weights instead of the trained ones.
    pub init_ema: bool,
    /// A head re-initialised for other classes is scaled by this (timm's `head_init_scale`).
    pub head_init_scale: f64,
}

impl Default for ModelInit {
    fn default() -> Self {
        Self { init: None, init_exclude: Vec::new(), init_ema: false, head_init_scale: 1.0 }
    }
}

impl ModelInit {
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

/// Optimizer and its parameter groups (timm's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub name: OptimizerKind,
    /// Learning rate at `base_batch` samples per step; scaled linearly to the global batch.
    pub lr: f64,
    /// Batch size `lr` refers to (DeiT/the paper: 512; Goyal et al. for ResNet: 256); 0 = no scaling.
    pub base_batch: usize,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub nesterov: bool,
    /// AdamW betas and epsilon.
    pub betas: [f64; 2],
    pub eps: f64,
    /// No weight decay for 1-D parameters: norm scales/shifts and biases.
    pub no_decay_1d: bool,
    /// No weight decay for parameters with these names (or name suffixes).
    pub no_decay_names: Vec<String>,
    /// Clip the global gradient norm to this value; 0 = off.
    pub clip_grad: f64,
    /// `[[optimizer.groups]]`: learning-rate and weight-decay multipliers by parameter name; the
    /// first rule that matches a parameter applies (see `train/param_groups.rs`).
    pub groups: Vec<GroupRule>,
    /// Layer-wise learning-rate decay for ViTs (timm's `layer_decay`, e.g. 0.65 to fine-tune);
    /// 1 = off.
    pub layer_decay: f64,
    /// Name patterns of parameters that do not train, unless a `train` pattern names them too.
    pub freeze: Vec<String>,
    pub train: Vec<String>,
}

/// One `[[optimizer.groups]]` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// A name pattern (`*` = any characters), e.g. `"blocks.*.mlp.*"`.
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default = "one")]
    pub lr_mult: f64,
    #[serde(default = "one")]
    pub wd_mult: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Adamw,
            lr: 5e-4,
            base_batch: 512,
            weight_decay: 0.05,
            momentum: 0.9,
            nesterov: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
            no_decay_1d: true,
            no_decay_names: vec!["pos_embed".into(), "cls_token".into()],
            clip_grad: 0.0,
            groups: Vec::new(),
            layer_decay: 1.0,
            freeze: Vec::new(),
            train: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine from the peak lr to `min_lr` over the epochs after warmup.
    Cosine,
    /// Multiply by `decay_rate` every `decay_epochs` (the classic ResNet recipe).
    Step,
    Constant,
}

/// Learning-rate schedule, evaluated per optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub name: ScheduleKind,
    /// Linear warmup from `warmup_lr` to the peak lr over this many epochs (fractions allowed).
    pub warmup_epochs: f64,
    pub warmup_lr: f64,
    pub min_lr: f64,
    pub decay_epochs: f64,
    pub decay_rate: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            name: ScheduleKind::Cosine,
            warmup_epochs: 5.0,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            decay_epochs: 30.0,
            decay_rate: 0.1,
        }
    }
}

/// The c10d backend of a multi-process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    /// NCCL on CUDA, Gloo on the CPU (see [`pe_dist::Backend::for_device`]).
    Auto,
    Gloo,
    Nccl,
}

impl DistBackend {
    /// The backend for a run on `device`.
    pub fn resolve(self, device: tch::Device) -> pe_dist::Backend {
        match self {
            DistBackend::Auto => pe_dist::Backend::for_device(device),
            DistBackend::Gloo => pe_dist::Backend::Gloo,
            DistBackend::Nccl => pe_dist::Backend::Nccl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amp {
    Off,
    Bf16,
    /// fp16 with dynamic loss scaling.
    Fp16,
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Samples per optimizer step on one device (before accumulation).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub accum_steps: usize,
    /// Model EMA decay per optimizer step; 0 = off.
    pub ema_decay: f64,
    pub amp: Amp,
    /// Run convolutional models in channels_last memory format.
    pub channels_last: bool,
    /// Capture the whole training step (forward, backward, optimizer, EMA, loss scaling) into a
    /// CUDA graph after a few eager warm-up steps and replay it, which removes the per-kernel launch
    /// cost of small batches. Needs a CUDA device, `accum_steps = 1` and one process (no
    /// distributed gradient all-reduce); every batch has the same shape (the last incomplete one
    /// is dropped). The numbers it trains to are those of the eager step.
    pub cuda_graph: bool,
    /// "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    pub device: DeviceChoice,
    pub seed: u64,
    /// Also write `last` every this many optimizer steps; 0 = only at epoch ends.
    pub checkpoint_every_steps: usize,
    /// Step folders kept, newest first (`last`'s included; `best` is kept besides): more than 1
    /// leaves checkpoints to average (`pe average`).
    pub keep_checkpoints: usize,
    /// Also keep for good the checkpoint of every this many epochs' end; 0 = none.
    pub keep_every_epochs: usize,
    /// Stop after this many optimizer steps in total (smoke tests); 0 = no limit.
    pub max_steps: usize,
    /// libtorch intra-op threads; 0 = libtorch's default.
    pub threads: usize,
    /// c10d backend of a multi-process run: "auto" (NCCL on CUDA, Gloo on CPU), "gloo" or "nccl".
    pub dist_backend: DistBackend,
    /// Seconds a rank waits for the others (rendezvous, every collective) before failing.
    pub dist_timeout_s: u64,
}

impl TrainConfig {
    /// How long a rank waits for the others (`dist_timeout_s`).
    pub fn dist_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dist_timeout_s)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 300,
            batch_size: 128,
            accum_steps: 1,
            ema_decay: 0.0,
            amp: Amp::Off,
            channels_last: false,
            cuda_graph: false,
            device: DeviceChoice::Auto,
            seed: 0,
            checkpoint_every_steps: 0,
            keep_checkpoints: 1,
            keep_every_epochs: 0,
            max_steps: 0,
            threads: 0,
            dist_backend: DistBackend::Auto,
            dist_timeout_s: 1800,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many epochs (and always after the last).
    pub every_epochs: usize,
    /// 0 = the training batch size.
    pub batch_size: usize,
    /// Also count the confusion matrix and write the per-class summary (worst classes, most-confused
    /// pairs) and the confusion figure to TensorBoard at every evaluation.
    pub per_class: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every_epochs: 1, batch_size: 0, per_class: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Parent of the run folder.
    pub runs_dir: PathBuf,
    /// Log train scalars every this many optimizer steps.
    pub every_steps: usize,
    /// Number of augmented training inputs written to TensorBoard once; 0 = none.
    pub sample_images: usize,
    /// Show a progress bar (off when stderr is not a terminal).
    pub progress: bool,
    /// Write a weight-space analysis (`pe analyze`: spectra, ranks, W/Wᵀ overlaps) to TensorBoard
    /// every this many epochs; 0 = never.
    pub analyze_every_epochs: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            runs_dir: PathBuf::from("runs"),
            every_steps: 50,
            sample_images: 8,
            progress: true,
            analyze_every_epochs: 0,
        }
    }
}

/// This machine's memory (MemTotal of /proc/meminfo), if it can be read.
fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A validation failure: the dotted key and what was expected.
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

fn ensure(ok: bool, key: &'static str, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid { key, message: message() })
    }
}

impl DistillConfig {
    fn validate(&self, train: &TrainConfig) -> Result<(), Invalid> {
        ensure((0.0..=1.0).contains(&self.alpha), "distill.alpha", || {
            format!("must be in [0, 1] (the teacher term's weight), got {}", self.alpha)
        })?;
        ensure(self.tau.is_finite() && self.tau > 0.0, "distill.tau", || {
            format!("must be a finite positive number, got {}", self.tau)
        })?;
        ensure(self.kind == DistillKind::Soft || self.tau == 1.0, "distill.tau", || {
            format!("is the soft kind's temperature; kind = \"hard\" takes none, got {}", self.tau)
        })?;
        ensure(!train.cuda_graph, "train.cuda_graph", || {
            "cannot be combined with [distill]: the teacher's forward is not captured into the graph; \
             turn train.cuda_graph off to train with a teacher"
                .into()
        })
    }
}

impl ExperimentConfig {
    /// Checks every impossible value; the first failure names its key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.model.validate().map_err(|e| Invalid { key: "model", message: e.to_string() })?;
        self.data.validate().map_err(|e| Invalid { key: "data", message: e.to_string() })?;
        let init = &self.model_init;
        let without_init = |key: &'static str, set: bool| {
            ensure(!set || init.init.is_some(), key, || "needs model.init (the weights to start from)".into())
        };
        without_init("model.init_exclude", !init.init_exclude.is_empty())?;
        without_init("model.init_ema", init.init_ema)?;
        without_init("model.head_init_scale", init.head_init_scale != 1.0)?;
        ensure(
            init.head_init_scale.is_finite() && init.head_init_scale > 0.0,
            "model.head_init_scale",
            || format!("must be a finite positive number, got {}", init.head_init_scale),
        )?;
        let t = &self.train;
        ensure(t.epochs >= 1, "train.epochs", || "must be at least 1".into())?;
        ensure(t.batch_size >= 1, "train.batch_size", || "must be at least 1".into())?;
        ensure(t.keep_checkpoints >= 1, "train.keep_checkpoints", || {
            "must be at least 1 (the checkpoint a run resumes from)".into()
        })?;
        ensure(t.accum_steps >= 1, "train.accum_steps", || "must be at least 1".into())?;
        ensure((0.0..1.0).contains(&t.ema_decay), "train.ema_decay", || {
            format!("must be in [0, 1) (0 = off), got {}", t.ema_decay)
        })?;
        ensure(!t.cuda_graph || t.accum_steps == 1, "train.cuda_graph", || {
            format!(
                "needs train.accum_steps = 1, got {}: the captured step is one forward/backward \
                 followed by the update",
                t.accum_steps
            )
        })?;
        ensure(!t.cuda_graph || t.device != DeviceChoice::Cpu, "train.cuda_graph", || {
            "needs a CUDA device (train.device = \"cuda\" or \"auto\" on a GPU machine), got \"cpu\"".into()
        })?;
        ensure(t.dist_timeout_s >= 1, "train.dist_timeout_s", || "must be at least 1".into())?;
        let o = &self.optimizer;
        ensure(o.lr.is_finite() && o.lr > 0.0, "optimizer.lr", || {
            format!("must be a finite positive number, got {}", o.lr)
        })?;
        ensure(o.weight_decay.is_finite() && o.weight_decay >= 0.0, "optimizer.weight_decay", || {
            format!("must be finite and >= 0, got {}", o.weight_decay)
        })?;
        ensure((0.0..1.0).contains(&o.momentum), "optimizer.momentum", || "must be in [0, 1)".into())?;
        ensure(o.betas.iter().all(|b| (0.0..1.0).contains(b)), "optimizer.betas", || {
            "must be in [0, 1)".into()
        })?;
        ensure(o.eps.is_finite() && o.eps > 0.0, "optimizer.eps", || {
            format!("must be a finite positive number, got {}", o.eps)
        })?;
        ensure(o.clip_grad.is_finite() && o.clip_grad >= 0.0, "optimizer.clip_grad", || {
            format!("must be finite and >= 0 (0 = off), got {}", o.clip_grad)
        })?;
        ensure(!(o.nesterov && o.momentum == 0.0), "optimizer.nesterov", || "needs momentum > 0".into())?;
        ensure(o.layer_decay > 0.0 && o.layer_decay <= 1.0, "optimizer.layer_decay", || {
            format!("must be in (0, 1] (1 = off), got {}", o.layer_decay)
        })?;
        ensure(
            o.layer_decay == 1.0 || matches!(self.model, ModelConfig::Vit(_)),
            "optimizer.layer_decay",
            || "is defined for ViTs (timm's block ids); this model is a ResNet".into(),
        )?;
        for rule in &o.groups {
            let ok = |m: f64| m.is_finite() && m >= 0.0;
            ensure(ok(rule.lr_mult) && ok(rule.wd_mult), "optimizer.groups", || {
                format!("{:?}: lr_mult and wd_mult must be finite and >= 0", rule.pattern)
            })?;
        }
        ensure(o.train.is_empty() || !o.freeze.is_empty(), "optimizer.train", || {
            "names exceptions to optimizer.freeze, which is empty".into()
        })?;
        let s = &self.schedule;
        ensure(
            s.warmup_epochs >= 0.0 && s.warmup_epochs < t.epochs as f64,
            "schedule.warmup_epochs",
            || format!("must be in [0, train.epochs = {}), got {}", t.epochs, s.warmup_epochs),
        )?;
        let lr_ok = |lr: f64| lr.is_finite() && lr >= 0.0;
        ensure(lr_ok(s.min_lr), "schedule.min_lr", || format!("must be finite and >= 0, got {}", s.min_lr))?;
        ensure(lr_ok(s.warmup_lr), "schedule.warmup_lr", || {
            format!("must be finite and >= 0, got {}", s.warmup_lr)
        })?;
        ensure(s.name != ScheduleKind::Step || s.decay_epochs > 0.0, "schedule.decay_epochs", || {
            "must be positive for the step schedule".into()
        })?;
        ensure(s.decay_rate.is_finite() && s.decay_rate > 0.0, "schedule.decay_rate", || {
            format!("must be a finite positive number, got {}", s.decay_rate)
        })?;
        if let Some(distill) = &self.distill {
            distill.validate(t)?;
        }
        ensure(self.eval.every_epochs >= 1, "eval.every_epochs", || "must be at least 1".into())?;
        ensure(self.logging.every_steps >= 1, "logging.every_steps", || "must be at least 1".into())?;
        ensure(self.data.img_size as i64 == self.model_img_size(), "data.img_size", || {
            format!(
                "the model needs {0}×{0} inputs, data.img_size is {1}",
                self.model_img_size(),
                self.data.img_size
            )
        })?;
        if let Some(memory) = host_memory_bytes() {
            self.check_batches_fit(memory)?;
        }
        Ok(())
    }

    /// Refuses batches that cannot fit in `memory` bytes before anything allocates them (an
    /// allocation that large aborts the process). What is counted is a floor: the loader's
    /// `prefetch + 1` uint8 batches and one float32 copy for the model, no activations.
    fn check_batches_fit(&self, memory: u64) -> Result<(), Invalid> {
        let side = self.data.img_size as u64;
        let image = 3u64.saturating_mul(side).saturating_mul(side);
        // uint8 batches (prefetch + 1) plus a float copy (4 bytes a value).
        let copies = self.data.prefetch as u64 + 1 + 4;
        for (key, batch) in
            [("train.batch_size", self.train.batch_size), ("eval.batch_size", self.eval_batch_size())]
        {
            let needed = image.saturating_mul(batch as u64).saturating_mul(copies);
            if needed <= memory {
                continue;
            }
            // Blame the image size when a single image is already too large.
            let key = if image.saturating_mul(copies) > memory / 64 { "data.img_size" } else { key };
            return Err(Invalid {
                key,
                message: format!(
                    "batches of {batch} images at data.img_size = {side} need at least {} ({} per uint8 \
                     batch, {} of them in the loader (data.prefetch + 1) and a float32 copy), more than \
                     this machine's {} of memory",
                    gib(needed),
                    gib(image.saturating_mul(batch as u64)),
                    self.data.prefetch + 1,
                    gib(memory)
                ),
            });
        }
        Ok(())
    }

    /// Fixed-size models (ViTs) need exactly their size; ResNets accept what the data gives.
    fn model_img_size(&self) -> i64 {
        match &self.model {
            ModelConfig::Vit(vit) => vit.img_size,
            ModelConfig::Resnet(_) => self.data.img_size as i64,
        }
    }

    /// Samples per optimizer step over `world` processes (`batch_size` is per process).
    pub fn global_batch(&self, world: usize) -> usize {
        self.train.batch_size * self.train.accum_steps * world
    }

    /// Where a WebDataset scan of this recipe's shards is cached: beside the runs, keyed by the URL
    /// list inside, so every run (and `pe eval`) over the same shards shares one scan.
    pub fn scan_cache(&self) -> PathBuf {
        self.logging.runs_dir.join(".webdataset")
    }

    /// Evaluation batch size (`eval.batch_size`, or the training one when 0).
    pub fn eval_batch_size(&self) -> usize {
        match self.eval.batch_size {
            0 => self.train.batch_size,
            size => size,
        }
    }

    /// Peak learning rate after linear scaling by the global batch of `world` processes.
    pub fn peak_lr(&self, world: usize) -> f64 {
        match self.optimizer.base_batch {
            0 => self.optimizer.lr,
            base => self.optimizer.lr * self.global_batch(world) as f64 / base as f64,
        }
    }
}
