//! `pe train`: the training loop — data, AMP, accumulation, clipping, EMA, schedule, evaluation,
//! checkpoints with exact resume, TensorBoard and metrics.jsonl.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use pe_data::{Loader, Mixup};
use pe_models::{weights, Model};

use crate::amp::Precision;
use crate::batch::{self, Normalizer};
use crate::checkpoint::{self, Checkpoints, TrainState};
use crate::config::{load::to_toml, load_experiment, Amp, Experiment, ExperimentConfig};
use crate::ema::Ema;
use crate::evaluate::{evaluate, EvalResult};
use crate::loss::{cross_entropy, soft_target_cross_entropy};
use crate::metrics::MetricsLog;
use crate::optimizer::Optimizer;
use crate::schedule::Schedule;
use crate::tensorboard::EventWriter;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment recipe (TOML).
    pub experiment: PathBuf,
    /// Override a key, e.g. `--set train.epochs=1 --set data.root=/data/imagenet`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Require a checkpoint to resume from (without it, a run resumes when its folder has one).
    #[arg(long)]
    pub resume: bool,
}

/// What a finished (or stopped) run reports.
pub enum Outcome {
    Finished,
    Interrupted,
}

pub fn run(args: TrainArgs) -> Result<Outcome> {
    let experiment = load_experiment(&args.experiment, &args.overrides)?;
    let config = &experiment.config;
    let resolved = to_toml(config);
    println!("# resolved experiment {} (from {})\n{resolved}", config.name, args.experiment.display());
    let run_dir = config.logging.runs_dir.join(&config.name);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let checkpoints = Checkpoints::new(&run_dir);
    if args.resume && checkpoints.last().is_none() {
        bail!("--resume: {} has no checkpoint", run_dir.display());
    }
    write_atomically(&run_dir.join("config.toml"), &resolved)?;
    Trainer::new(&experiment, run_dir, checkpoints)?.fit()
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

struct Trainer {
    config: ExperimentConfig,
    device: Device,
    run_dir: PathBuf,
    vs: nn::VarStore,
    model: Model,
    ema: Option<Ema>,
    optimizer: Optimizer,
    scaler: Option<pe_torch::scaler::GradScaler>,
    precision: Precision,
    schedule: Schedule,
    train_loader: Loader,
    eval_loader: Loader,
    normalizer: Normalizer,
    mixup: Option<Mixup>,
    steps_per_epoch: usize,
    state: TrainState,
    checkpoints: Checkpoints,
    events: EventWriter,
    metrics: MetricsLog,
    interrupted: Arc<AtomicBool>,
}

fn data_error(config: &ExperimentConfig, error: pe_data::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{error}\nThe recipe {} reads data.root = {:?}; see data/README.md for the expected ImageFolder layout \
         (or set another root with --set data.root=PATH).",
        config.name,
        config.data.root
    )
}

impl Trainer {
    fn new(experiment: &Experiment, run_dir: PathBuf, checkpoints: Checkpoints) -> Result<Self> {
        let config = experiment.config.clone();
        let train = &config.train;
        if train.threads > 0 {
            tch::set_num_threads(train.threads as i32);
        }
        let device = crate::device::resolve(&train.device)?;
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let train_loader = Loader::train(&config.data, train.batch_size, train.seed, 0, 1)
            .map_err(|e| data_error(&config, e))?;
        let eval_batch = config.eval_batch_size();
        let eval_loader = Loader::eval(&config.data, eval_batch, 0, 1).map_err(|e| data_error(&config, e))?;
        let classes = train_loader.dataset().num_classes() as i64;
        if classes != config.model.num_classes() {
            bail!(
                "the model has {} classes but {} has {classes} class folders: set model.num_classes = {classes}",
                config.model.num_classes(),
                train_loader.dataset().dir.display()
            );
        }
        let steps_per_epoch = train_loader.batches_per_epoch() / train.accum_steps;
        if steps_per_epoch == 0 {
            bail!(
                "an epoch of {} samples has no full optimizer step of batch_size {} × accum_steps {}",
                train_loader.samples_per_epoch(),
                train.batch_size,
                train.accum_steps
            );
        }

        tch::manual_seed(train.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = config.model.init(vs.root());
        let precision = Precision { amp: train.amp, channels_last: train.channels_last };
        if train.channels_last {
            pe_torch::memory_format::convert_conv_weights_(&vs)?;
        }
        let optimizer = Optimizer::new(&vs, &config.optimizer)?;
        let scaler = (train.amp == Amp::Fp16).then(|| pe_torch::scaler::GradScaler::new(true));
        let ema =
            if train.ema_decay > 0.0 { Some(Ema::new(&config.model, &vs, train.ema_decay)?) } else { None };
        let schedule = Schedule::new(&config.schedule, config.peak_lr(), steps_per_epoch, train.epochs);
        let normalizer = Normalizer::new(config.data.mean, config.data.std, device);
        let mixup = Mixup::from_config(&config.data, classes as usize);
        let events = EventWriter::create(&run_dir).context("creating the TensorBoard event file")?;
        let metrics = MetricsLog::open(&run_dir.join("metrics.jsonl")).context("opening metrics.jsonl")?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        // First Ctrl-C: finish the step, save, exit. Second: exit at once.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)");
        });
        let mut trainer = Self {
            config,
            device,
            run_dir,
            vs,
            model,
            ema,
            optimizer,
            scaler,
            precision,
            schedule,
            train_loader,
            eval_loader,
            normalizer,
            mixup,
            steps_per_epoch,
            state: TrainState::default(),
            checkpoints,
            events,
            metrics,
            interrupted,
        };
        if let Some(dir) = trainer.checkpoints.last() {
            trainer.restore(&dir)?;
            println!(
                "resumed from {} (step {}, epoch {})",
                dir.display(),
                trainer.state.step,
                trainer.state.epoch
            );
        }
        Ok(trainer)
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        weights::load(&self.vs, &dir.join(checkpoint::MODEL))?;
        if let Some(ema) = &self.ema {
            weights::load(&ema.vs, &dir.join(checkpoint::EMA))?;
        }
        let optimizer_file = dir.join(checkpoint::OPTIMIZER);
        let tensors = Tensor::read_safetensors(&optimizer_file)
            .with_context(|| format!("reading {}", optimizer_file.display()))?;
        self.optimizer.load_state_tensors(tensors)?;
        self.state = checkpoint::read_state(dir)?;
        if let (Some(scaler), Some(state)) = (&mut self.scaler, &self.state.scaler) {
            scaler.load_state(&serde_json::from_value(state.clone())?)?;
        }
        Ok(())
    }

    fn save(&mut self, best: bool) -> Result<PathBuf> {
        self.state.scaler = self.scaler.as_ref().map(|s| serde_json::to_value(s.state())).transpose()?;
        let (vs, ema, optimizer, state) = (&self.vs, &self.ema, &self.optimizer, &self.state);
        self.checkpoints.save(state.step, best, |dir| {
            weights::save(vs, &dir.join(checkpoint::MODEL))?;
            if let Some(ema) = ema {
                weights::save(&ema.vs, &dir.join(checkpoint::EMA))?;
            }
            Tensor::write_safetensors(&optimizer.state_tensors(), dir.join(checkpoint::OPTIMIZER))?;
            checkpoint::write_state(dir, state)
        })
    }

    fn fit(mut self) -> Result<Outcome> {
        let epochs = self.config.train.epochs as u64;
        let mut last_eval = None;
        while self.state.epoch < epochs {
            let epoch = self.state.epoch;
            match self.train_epoch(epoch)? {
                EpochEnd::Interrupted => {
                    let dir = self.save(false)?;
                    println!("saved {} — rerun the same command to resume", dir.display());
                    return Ok(Outcome::Interrupted);
                }
                EpochEnd::MaxSteps => {
                    last_eval = Some(self.evaluate_and_save(epoch)?);
                    break;
                }
                EpochEnd::Completed => {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                    let due = (epoch + 1).is_multiple_of(self.config.eval.every_epochs as u64)
                        || epoch + 1 == epochs;
                    if due {
                        last_eval = Some(self.evaluate_and_save(epoch)?);
                    } else {
                        self.save(false)?;
                    }
                }
            }
        }
        self.events.flush()?;
        self.report(last_eval);
        Ok(Outcome::Finished)
    }

    fn report(&self, last: Option<(EvalResult, Option<EvalResult>)>) {
        if let Some((result, ema)) = last {
            let ema = ema.map(|e| format!(" (EMA {:.2}%)", e.acc1)).unwrap_or_default();
            println!(
                "final top-1 {:.2}% top-5 {:.2}%{ema} on {} images",
                result.acc1, result.acc5, result.samples
            );
        }
        if let Some(epoch) = self.state.best_epoch {
            println!("best top-1 {:.2}% after epoch {}", self.state.best_acc1, epoch + 1);
        }
        println!(
            "logs: {} (TensorBoard: make tensorboard; metrics: {})",
            self.run_dir.display(),
            self.run_dir.join("metrics.jsonl").display()
        );
    }

    fn evaluate_and_save(&mut self, epoch: u64) -> Result<(EvalResult, Option<EvalResult>)> {
        let result =
            evaluate(&self.model, &self.eval_loader, &self.normalizer, self.device, &self.precision)?;
        let ema = match &self.ema {
            Some(ema) => {
                Some(evaluate(&ema.model, &self.eval_loader, &self.normalizer, self.device, &self.precision)?)
            }
            None => None,
        };
        let step = self.state.step;
        for (prefix, r) in [("eval", Some(result)), ("eval_ema", ema)] {
            let Some(r) = r else { continue };
            self.events.scalar(&format!("{prefix}/acc1"), r.acc1, step)?;
            self.events.scalar(&format!("{prefix}/acc5"), r.acc5, step)?;
            self.events.scalar(&format!("{prefix}/loss"), r.loss, step)?;
            self.metrics.write(&json!({"type": prefix, "epoch": epoch + 1, "step": step,
                "acc1": r.acc1, "acc5": r.acc5, "loss": r.loss, "samples": r.samples}))?;
        }
        self.events.flush()?;
        println!(
            "epoch {} eval: top-1 {:.2}% top-5 {:.2}% loss {:.4}",
            epoch + 1,
            result.acc1,
            result.acc5,
            result.loss
        );
        let best = result.acc1 > self.state.best_acc1 || self.state.best_epoch.is_none();
        if best {
            self.state.best_acc1 = result.acc1;
            self.state.best_epoch = Some(epoch);
        }
        self.save(best)?;
        Ok((result, ema))
    }

    /// Seeds libtorch's generator per micro-batch, so dropout/drop-path draws depend only on
    /// (seed, position in training) and a resumed run repeats them exactly.
    fn seed_micro_batch(&self, micro_step: u64) {
        let seed = self.config.train.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro_step;
        tch::manual_seed((seed >> 1) as i64);
    }

    fn train_epoch(&mut self, epoch: u64) -> Result<EpochEnd> {
        let accum = self.config.train.accum_steps as u64;
        let batches = self.steps_per_epoch as u64 * accum;
        let start = self.state.batch_in_epoch;
        let progress = self.progress_bar(epoch, start / accum);
        let mut window = Window::start();
        let mut step_loss = 0.0;
        let mut iter = self.train_loader.epoch_from(epoch, start as usize);
        let mut waiting_since = Instant::now();
        for batch in iter.by_ref() {
            let batch = batch?;
            if batch.index >= batches {
                break;
            }
            window.data_wait += waiting_since.elapsed().as_secs_f64();
            let micro_step = self.state.step * accum + batch.index % accum;
            self.seed_micro_batch(micro_step);
            if self.state.step == 0 && batch.index == 0 {
                self.log_sample_images(&batch)?;
            }
            step_loss += self.forward_backward(&batch)? / accum as f64;
            window.images += batch.n;
            self.train_loader.recycle(batch.images);
            if !(batch.index + 1).is_multiple_of(accum) {
                waiting_since = Instant::now();
                continue;
            }
            let (grad_norm, skipped) = self.optimizer_step()?;
            self.state.step += 1;
            self.state.batch_in_epoch = batch.index + 1;
            let lr = self.schedule.lr(self.state.step as usize - 1);
            self.log_step(epoch, step_loss, lr, grad_norm, skipped, &mut window)?;
            progress.set_position(self.state.batch_in_epoch / accum);
            progress.set_message(format!("loss {step_loss:.4} lr {lr:.2e}"));
            step_loss = 0.0;
            let every = self.config.train.checkpoint_every_steps as u64;
            if every > 0 && self.state.step.is_multiple_of(every) {
                self.save(false)?;
            }
            if self.interrupted.load(Ordering::SeqCst) {
                progress.abandon();
                return Ok(EpochEnd::Interrupted);
            }
            let max = self.config.train.max_steps as u64;
            if max > 0 && self.state.step >= max {
                progress.finish_and_clear();
                return Ok(EpochEnd::MaxSteps);
            }
            waiting_since = Instant::now();
        }
        progress.finish_and_clear();
        let bad = iter.bad_files();
        if bad.count > 0 {
            // The loader already printed the paths; keep the count for scripts.
            self.metrics.write(&json!({"type": "bad_files", "epoch": epoch + 1, "count": bad.count}))?;
        }
        Ok(EpochEnd::Completed)
    }

    /// One micro-batch: forward under autocast, loss, (scaled) backward. Returns the loss value.
    fn forward_backward(&mut self, batch: &pe_data::Batch) -> Result<f64> {
        let (images, labels) = batch::to_device(batch, self.device);
        let mut images = self.normalizer.apply(&images);
        let targets = match &self.mixup {
            Some(mixup) => {
                let plan =
                    mixup.plan_for(self.config.train.seed, batch.epoch, batch.index, 0, batch.h, batch.w);
                images = batch::mix(&images, &plan);
                Some(batch::soft_targets(mixup, &batch.labels, &plan, self.device))
            }
            None => None,
        };
        let images = self.precision.input(images)?;
        let logits = {
            let _autocast = self.precision.autocast(self.device)?;
            self.model.forward_t(&images, true)
        };
        let loss = match &targets {
            Some(targets) => soft_target_cross_entropy(&logits, targets),
            None => cross_entropy(&logits, &labels, self.config.data.label_smoothing),
        };
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            bail!(
                "the loss is {value} at step {} (epoch {}, batch {})",
                self.state.step,
                batch.epoch + 1,
                batch.index
            );
        }
        let scaled = loss / self.config.train.accum_steps as f64;
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(&scaled).backward(),
            None => scaled.backward(),
        }
        Ok(value)
    }

    /// Unscale, clip, step (unless fp16 overflowed), update the scaler and EMA, zero grads.
    fn optimizer_step(&mut self) -> Result<(f64, bool)> {
        let grads = self.optimizer.grads();
        let found_inf = match &mut self.scaler {
            Some(scaler) => scaler.unscale_(&grads)?,
            None => false,
        };
        // The global norm costs a reduction and a host sync: only when clipping or logging this step.
        let logged = (self.state.step + 1).is_multiple_of(self.config.logging.every_steps as u64);
        let clip = self.config.optimizer.clip_grad;
        let grad_norm = if clip > 0.0 || logged { clip_grad_norm(&grads, clip) } else { f64::NAN };
        if found_inf {
            self.state.skipped_steps += 1;
        } else {
            let lr = self.schedule.lr(self.state.step as usize);
            self.optimizer.step(lr)?;
            if let Some(ema) = &mut self.ema {
                ema.update();
            }
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update()?;
        }
        self.optimizer.zero_grad()?;
        Ok((grad_norm, found_inf))
    }

    fn log_step(
        &mut self,
        epoch: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        skipped: bool,
        window: &mut Window,
    ) -> Result<()> {
        let step = self.state.step;
        if !step.is_multiple_of(self.config.logging.every_steps as u64) {
            return Ok(());
        }
        let seconds = window.started.elapsed().as_secs_f64().max(1e-9);
        let img_per_s = window.images as f64 / seconds;
        let data_wait = (window.data_wait / seconds).min(1.0);
        let scale = self.scaler.as_ref().map(|s| s.scale_value());
        self.events.scalar("train/loss", loss, step)?;
        self.events.scalar("train/lr", lr, step)?;
        self.events.scalar("train/grad_norm", grad_norm, step)?;
        self.events.scalar("perf/img_per_s", img_per_s, step)?;
        self.events.scalar("perf/data_wait_fraction", data_wait, step)?;
        if let Some(scale) = scale {
            self.events.scalar("train/loss_scale", scale, step)?;
            self.events.scalar("train/skipped_steps", self.state.skipped_steps as f64, step)?;
        }
        self.metrics.write(&json!({"type": "train", "step": step, "epoch": epoch + 1, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "img_per_s": img_per_s, "data_wait": data_wait, "loss_scale": scale, "skipped": skipped}))?;
        *window = Window::start();
        Ok(())
    }

    fn log_sample_images(&mut self, batch: &pe_data::Batch) -> Result<()> {
        let count = self.config.logging.sample_images.min(batch.n);
        let plane = 3 * batch.h * batch.w;
        for i in 0..count {
            let chw = &batch.images[i * plane..(i + 1) * plane];
            self.events.image_chw(&format!("inputs/{i}"), chw, batch.h, batch.w, 0)?;
        }
        Ok(())
    }

    fn progress_bar(&self, epoch: u64, position: u64) -> indicatif::ProgressBar {
        if !self.config.logging.progress || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(self.steps_per_epoch as u64).with_position(position);
        let style = indicatif::ProgressStyle::with_template(
            "epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
        )
        .expect("a valid progress template");
        bar.set_style(style);
        bar.set_prefix(format!("{}/{}", epoch + 1, self.config.train.epochs));
        bar
    }
}

enum EpochEnd {
    Completed,
    Interrupted,
    MaxSteps,
}

/// Throughput bookkeeping between two log lines.
struct Window {
    started: Instant,
    images: usize,
    data_wait: f64,
}

impl Window {
    fn start() -> Self {
        Self { started: Instant::now(), images: 0, data_wait: 0.0 }
    }
}

/// The global L2 norm of `grads`; when `max_norm > 0`, scales them in place to at most `max_norm`.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if max_norm > 0.0 && total > max_norm {
        let coef = max_norm / (total + 1e-6);
        tch::no_grad(|| {
            for g in grads {
                let mut g = g.shallow_clone();
                g *= coef;
            }
        });
    }
    total
}
