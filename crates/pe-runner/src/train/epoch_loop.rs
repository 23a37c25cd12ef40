//! The epoch loop of a training run. It walks epochs and batches, asks the step engine for steps,
//! the schedule for learning rates and the loaders for data, evaluates, and hands metrics to the
//! observers and state to the run folder (both on rank 0 only).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use pe_data::{Loader, Split};
use tch::Tensor;

use crate::config::{load::to_toml, ConfigError, Experiment, ExperimentConfig};
use crate::eval::figure;
use crate::eval::labels::Targets;
use crate::eval::per_class;
use crate::eval::tally::{EvalResult, Tally};
use crate::train::batch::TrainInputs;
use crate::train::checkpoint::{Retention, TrainState};
use crate::train::dist::Dist;
use crate::train::evaluate::{evaluate, Keep};
use crate::train::init_weights::{InitIdentity, InitialWeights};
use crate::train::observers::{LogStart, Observers, Record, Section};
use crate::train::run_folder::{RunFolder, Start, StartRequest};
use crate::train::run_identity::{DatasetIdentity, Identity};
use crate::train::schedule::Schedule;
use crate::train::step_engine::{EngineConfig, MicroBatch, StepEngine};
use crate::train::stop::StopRequest;

/// What a finished (or stopped) run reports.
pub enum Outcome {
    Finished,
    Interrupted,
}

/// Trains `experiment` from where its run folder stands (see [`RunFolder::claim`]).
pub fn train(experiment: &Experiment, request: &StartRequest, stop: StopRequest) -> Result<Outcome> {
    let config = &experiment.config;
    let resolved = to_toml(config);
    let device = config.train.device.resolve()?;
    let dist = Dist::from_env(config.train.dist_backend, config.train.dist_timeout(), device, &resolved)?;
    let device = dist.device(device);
    // Everything that can refuse the recipe (data, batch sizes, the model) comes before the run
    // folder is touched: a refused start leaves nothing behind.
    let initial = InitialWeights::open(&config.model_init)?;
    let init_identity = initial.as_ref().map(|weights| weights.identity.clone());
    let mut trainer = TrainLoop::new(experiment, dist, device, stop, init_identity)?;
    // Loaded (and refused) before the folder is claimed; a resume then replaces them.
    let started_from = match initial {
        Some(weights) => {
            let file = weights.file.clone();
            Some((file, trainer.engine.start_from(&config.model, weights, &config.model_init)?))
        }
        None => None,
    };
    trainer.folder.lock()?;
    let start = trainer.folder.claim(request)?;
    trainer.open_observers(start.as_ref())?;
    trainer.observers.say(&format!(
        "# resolved experiment {} (from {})\n{resolved}",
        config.name,
        experiment.source.display()
    ));
    if let (Some(teacher), Some(distill)) = (trainer.engine.teacher(), &config.distill) {
        trainer.observers.say(&teacher.summary(distill));
    }
    if start.is_none() {
        trainer.record_param_groups()?;
    }
    match (start, started_from) {
        (Some(start), _) => trainer.resume(start)?,
        (None, Some((file, adapted))) => {
            trainer.observers.say(&format!("model.init: starting from {}", file.display()));
            for line in adapted.lines(&config.model) {
                trainer.observers.say(&format!("model.init: {line}"));
            }
        }
        (None, None) => {}
    }
    trainer.dist.join_engine(&mut trainer.engine)?;
    trainer.fit()
}

fn data_error(config: &ExperimentConfig, error: pe_data::Error) -> anyhow::Error {
    if config.data.format == pe_data::DataFormat::WebDataset {
        return anyhow::anyhow!(
            "{error}\nThe recipe {} reads WebDataset shards data.train_urls = {:?}, data.val_urls = {:?} \
             (relative names under data.root = {:?}); see data/README.md.",
            config.name,
            config.data.train_urls.0,
            config.data.val_urls.0,
            config.data.root
        );
    }
    anyhow::anyhow!(
        "{error}\nThe recipe {} reads data.root = {:?}; see data/README.md for the expected ImageFolder layout \
         (or set another root with --set data.root=PATH).",
        config.name,
        config.data.root
    )
}

struct TrainLoop {
    config: ExperimentConfig,
    dist: Dist,
    folder: RunFolder,
    engine: StepEngine,
    schedule: Schedule,
    train_loader: Loader,
    eval_loader: Loader,
    /// The run's classes, for the evaluation's counts.
    eval_targets: Targets,
    inputs: TrainInputs,
    steps_per_epoch: usize,
    state: TrainState,
    observers: Observers,
    stop: StopRequest,
    /// The step at which the losses were last checked to be finite (see `check_losses_finite`).
    losses_checked_at: u64,
}

impl TrainLoop {
    fn new(
        experiment: &Experiment,
        dist: Dist,
        device: tch::Device,
        stop: StopRequest,
        init: Option<InitIdentity>,
    ) -> Result<Self> {
        let config = experiment.config.clone();
        let train = &config.train;
        if train.threads > 0 {
            tch::set_num_threads(train.threads as i32);
        }
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let (rank, world) = (dist.rank, dist.world);
        let split = Split::Train { batch_size: train.batch_size, seed: train.seed };
        let scan_cache = config.scan_cache();
        let open = |split| {
            Loader::open_with_cache(&config.data, split, rank, world, &scan_cache)
                .map_err(|e| data_error(&config, e))
        };
        let train_loader = open(split)?;
        // The training split defines the classes; validation folders map through its list.
        let classes = train_loader.classes();
        let eval_loader = open(Split::Eval { batch_size: config.eval_batch_size(), classes: Some(classes) })?;
        if dist.is_main() && !eval_loader.missing_classes().is_empty() {
            tracing::warn!(
                "the {} split has no images of {} class(es): {}",
                config.data.val_split,
                eval_loader.missing_classes().len(),
                eval_loader.missing_classes().join(", ")
            );
        }
        let classes = train_loader.classes().len() as i64;
        if classes != config.model.num_classes() {
            let head = if config.model_init.init.is_some() {
                " (a head for another class count than model.init's weights is re-initialised)"
            } else {
                ""
            };
            return Err(ConfigError {
                location: experiment.source.display().to_string(),
                key: Some("model.num_classes".into()),
                message: format!(
                    "the model has {} classes but {} has {classes}: set model.num_classes = {classes}{head}",
                    config.model.num_classes(),
                    train_loader.location().display()
                ),
            }
            .into());
        }
        let steps_per_epoch = train_loader.batches_per_epoch() / train.accum_steps;
        if steps_per_epoch == 0 {
            return Err(ConfigError {
                location: experiment.source.display().to_string(),
                key: Some("train.batch_size".into()),
                message: format!(
                    "an epoch of {} samples (this process's share of {}) has no full optimizer step of \
                     batch_size {} × accum_steps {}",
                    train_loader.samples_per_epoch(),
                    train_loader.location().display(),
                    train.batch_size,
                    train.accum_steps
                ),
            }
            .into());
        }

        tch::manual_seed(train.seed as i64);
        let engine = StepEngine::new(&EngineConfig::from_experiment(&config), device)?;
        let schedule = Schedule::new(&config.schedule, config.peak_lr(world), steps_per_epoch, train.epochs);
        let inputs = TrainInputs::new(&config.data, classes as usize, train.seed, rank, device);
        let dataset = DatasetIdentity {
            root: config.data.root.display().to_string(),
            classes: train_loader.classes().to_vec(),
            train_samples: train_loader.len(),
            val_samples: eval_loader.len(),
            train_fingerprint: train_loader.fingerprint(),
            val_fingerprint: eval_loader.fingerprint(),
        };
        let run_dir = config.logging.runs_dir.join(&config.name);
        let retention = Retention {
            newest: config.train.keep_checkpoints,
            every_epochs: config.train.keep_every_epochs as u64,
        };
        let teacher = engine.teacher().map(|teacher| teacher.identity().clone());
        let folder = RunFolder::new(
            run_dir,
            Identity::new(&config, dataset, init, teacher),
            dist.is_main(),
            retention,
        );
        Ok(Self {
            config,
            dist,
            folder,
            engine,
            schedule,
            train_loader,
            eval_targets: Targets::identity(eval_loader.classes().to_vec()),
            eval_loader,
            inputs,
            steps_per_epoch,
            state: TrainState { world: world as u64, ..TrainState::default() },
            // Opened once the folder is known to hold this experiment: a refused run must not
            // leave an event file in someone else's run.
            observers: Observers::none(),
            stop,
            losses_checked_at: 0,
        })
    }

    /// TensorBoard, metrics.jsonl and the console (rank 0), the logs cut back to `start`.
    fn open_observers(&mut self, start: Option<&Start>) -> Result<()> {
        if !self.dist.is_main() {
            return Ok(());
        }
        let logs = match start {
            Some(start) => LogStart::Continue { step: start.state.step, mark: start.state.logs.as_ref() },
            None => LogStart::Fresh,
        };
        let init = self.folder.identity().init.as_ref();
        self.observers = Observers::for_run(self.folder.dir(), &self.config, init, &logs)?;
        Ok(())
    }

    /// Writes `param_groups.json` (which parameters train, at which learning-rate scale and weight
    /// decay) into a new run's folder, and says in one line what it holds.
    fn record_param_groups(&mut self) -> Result<()> {
        if !self.dist.is_main() {
            return Ok(());
        }
        let groups = self.engine.param_groups();
        let path = self.folder.dir().join("param_groups.json");
        pe_data::atomic_file::write(&path, serde_json::to_string_pretty(groups)?)?;
        let tensors: usize = groups.iter().map(|g| g.params.len()).sum();
        let scales: std::collections::BTreeSet<String> =
            groups.iter().map(|g| format!("{:.4}", g.lr_scale)).collect();
        self.observers.say(&format!(
            "optimizer: {tensors} trained tensors in {} group(s), lr scales {} ({})",
            groups.len(),
            scales.into_iter().collect::<Vec<_>>().join(", "),
            path.display()
        ));
        Ok(())
    }

    /// Continues from `start`: its weights, optimizer state and where training stood.
    fn resume(&mut self, start: Start) -> Result<()> {
        let world = self.dist.world as u64;
        let state = &start.state;
        if state.world != world && state.batch_in_epoch > 0 {
            bail!(
                "{} was saved by {} process(es) in the middle of epoch {}; this run has {world}. Resume \
                 it with {} process(es), or from a checkpoint at an epoch boundary",
                start.dir.display(),
                state.world,
                state.epoch + 1,
                state.world
            );
        }
        self.engine.restore_checkpoint(&start.dir, state.scaler.as_ref())?;
        self.folder.continue_from(&start)?;
        self.state = TrainState { world, ..start.state };
        self.losses_checked_at = self.state.step;
        let place = match self.state.batch_in_epoch {
            0 => format!("after epoch {}", self.state.epoch),
            batch => format!("inside epoch {}, batch {batch}", self.state.epoch + 1),
        };
        self.observers.say(&format!(
            "resumed from {} (step {}, {place})",
            start.dir.display(),
            self.state.step
        ));
        Ok(())
    }

    /// Publishes a checkpoint (rank 0) and makes every logged point durable with it.
    fn save(&mut self, best: bool) -> Result<Option<PathBuf>> {
        self.check_losses_finite()?;
        self.dist.sync_buffers(&self.engine)?;
        self.dist.check_in_sync(&self.engine)?;
        if !self.dist.is_main() {
            return Ok(None);
        }
        self.state.scaler = self.engine.scaler_state();
        // Flushed before the checkpoint is published: whoever sees a checkpoint (a resume after a
        // SIGKILL) finds every point logged up to it in TensorBoard and metrics.jsonl, and the
        // checkpoint says where those logs end, so a resume can drop what came after.
        self.observers.flush()?;
        self.state.logs = self.observers.log_mark()?;
        let engine = &self.engine;
        Ok(Some(self.folder.save(&self.state, best, |dir| engine.write_checkpoint(dir))?))
    }

    fn fit(mut self) -> Result<Outcome> {
        let epochs = self.config.train.epochs as u64;
        let mut last_eval = None;
        // A rerun of a run that already stopped at train.max_steps trains nothing more.
        while self.state.epoch < epochs && !self.reached_max_steps() {
            let epoch = self.state.epoch;
            match self.train_epoch(epoch)? {
                EpochEnd::Interrupted => {
                    if let Some(dir) = self.save(false)? {
                        self.observers
                            .say(&format!("saved {} — rerun the same command to resume", dir.display()));
                    }
                    self.observers.run_ended(false)?;
                    return Ok(Outcome::Interrupted);
                }
                EpochEnd::MaxSteps => {
                    // The run ends here, at an epoch end or not: analysis and evaluation are due.
                    self.analyze_if_due(epoch, true)?;
                    let batches = (self.steps_per_epoch * self.config.train.accum_steps) as u64;
                    let at_epoch_end = self.state.batch_in_epoch == batches;
                    last_eval = Some(self.evaluate_and_save(epoch, at_epoch_end)?);
                    break;
                }
                EpochEnd::Completed => {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                    let last = epoch + 1 == epochs;
                    self.analyze_if_due(epoch, last)?;
                    let due = (epoch + 1).is_multiple_of(self.config.eval.every_epochs as u64) || last;
                    if due {
                        last_eval = Some(self.evaluate_and_save(epoch, true)?);
                    } else {
                        self.save(false)?;
                    }
                }
            }
        }
        self.observers.run_ended(true)?;
        self.observers.flush()?;
        self.report(last_eval);
        Ok(Outcome::Finished)
    }

    /// Every `logging.analyze_every_epochs` epochs and when the run ends (`last`), as evaluation
    /// does, rank 0 logs the weight-space analysis (singular-value histograms, ranks, tied-pair
    /// overlaps) of the current weights.
    fn analyze_if_due(&mut self, epoch: u64, last: bool) -> Result<()> {
        let every = self.config.logging.analyze_every_epochs as u64;
        let due = last || (epoch + 1).is_multiple_of(every.max(1));
        if every == 0 || !due || !self.dist.is_main() {
            return Ok(());
        }
        let analysis = pe_analyze::Analysis::new(self.engine.model())?;
        let report = analysis.report(&self.config.name, pe_analyze::RunInfo::default(), None)?;
        self.observers.analysis(&report, self.state.step)
    }

    fn report(&mut self, last: Option<(EvalResult, Option<EvalResult>)>) {
        if let Some((result, ema)) = last {
            let ema = ema.map(|e| format!(" (EMA {:.2}%)", e.acc1)).unwrap_or_default();
            self.observers.say(&format!(
                "final top-1 {:.2}% top-5 {:.2}%{ema} on {}",
                result.acc1,
                result.acc5,
                result.counted()
            ));
        }
        if let Some(epoch) = self.state.best_after_epoch {
            self.observers.say(&format!("best top-1 {:.2}% after epoch {}", self.state.best_acc1, epoch));
        }
        let dir = self.folder.dir();
        // `make tensorboard` serves ./runs only.
        let runs_dir = &self.config.logging.runs_dir;
        let here = |path: &std::path::Path| std::fs::canonicalize(path).ok();
        let serve = if here(runs_dir).is_some() && here(runs_dir) == here(std::path::Path::new("runs")) {
            "make tensorboard".to_owned()
        } else {
            format!(".venv/bin/tensorboard --logdir {}", runs_dir.display())
        };
        self.observers.say(&format!(
            "logs: {} (TensorBoard: {serve}; metrics: {})",
            dir.display(),
            dir.join("metrics.jsonl").display()
        ));
    }

    /// Evaluates a model on every rank's shard and adds the shards' counts up (the confusion
    /// matrix too, with `eval.per_class`); each rank names the unreadable images of its shard.
    fn evaluate_sharded(&self, model: &pe_models::Model, epoch: u64) -> Result<(EvalResult, Tally)> {
        let engine = &self.engine;
        let keep = Keep { confusion: self.config.eval.per_class, top_k: 0 };
        let evaluation = evaluate(
            model,
            &self.eval_loader,
            self.inputs.normalizer(),
            engine.device(),
            engine.precision(),
            &self.eval_targets,
            keep,
        )?;
        if evaluation.bad.count > 0 {
            let location = self.eval_loader.location().display();
            tracing::warn!("{location}, evaluation after epoch {}: left out {}", epoch + 1, evaluation.bad);
        }
        let mut totals = evaluation.tally.to_vec();
        self.dist.sum(&mut totals)?;
        let tally = Tally::from_vec(&totals);
        Ok((tally.result(false)?, tally))
    }

    /// `eval.per_class`: the confusion figure and the per-class summary of an evaluation, to
    /// TensorBoard under `section`.
    fn record_per_class(&mut self, section: Section, tally: &Tally) -> Result<()> {
        if tally.confusion.is_empty() {
            return Ok(());
        }
        let classes = &self.eval_targets.classes;
        let view = figure::top_confusions(&tally.confusion, classes.len(), crate::eval::FIGURE_CLASSES);
        let (chw, h, w) = figure::raster(&view, crate::eval::RASTER_CELL);
        let step = self.state.step;
        self.observers.image(&format!("{}/confusion", section.name()), &chw, h, w, step)?;
        let summary = per_class::markdown_summary(&tally.confusion, classes, 10);
        self.observers.text(&format!("{}/per_class", section.name()), &summary, step)
    }

    /// Evaluates the model (and EMA) after `epoch`'s steps or, when `train.max_steps` stopped the
    /// run inside it (`at_epoch_end` false), after the steps it trained; then saves.
    fn evaluate_and_save(
        &mut self,
        epoch: u64,
        at_epoch_end: bool,
    ) -> Result<(EvalResult, Option<EvalResult>)> {
        self.dist.sync_buffers(&self.engine)?;
        let (result, tally) = self.evaluate_sharded(self.engine.model(), epoch)?;
        self.record_per_class(Section::Eval, &tally)?;
        let ema = match self.engine.ema_model() {
            Some(ema) => {
                let (ema, tally) = self.evaluate_sharded(ema, epoch)?;
                self.record_per_class(Section::EvalEma, &tally)?;
                Some(ema)
            }
            None => None,
        };
        let step = self.state.step;
        for (section, r) in [(Section::Eval, Some(result)), (Section::EvalEma, ema)] {
            let Some(r) = r else { continue };
            let mut values =
                vec![("acc1", r.acc1), ("acc5", r.acc5), ("loss", r.loss), ("samples", r.samples as f64)];
            if r.unreadable > 0 {
                values.push(("unreadable", r.unreadable as f64));
            }
            let within_epoch = !at_epoch_end;
            self.observers.record(&Record {
                section,
                step,
                epoch: epoch + 1,
                within_epoch,
                values: &values,
            })?;
        }
        if result.unreadable > 0 {
            let values = [("count", result.unreadable as f64)];
            let section = Section::Event("eval_bad_files");
            self.observers.record(&Record::new(section, step, epoch + 1, &values))?;
        }
        let best = result.acc1 > self.state.best_acc1 || self.state.best_after_epoch.is_none();
        if best {
            self.state.best_acc1 = result.acc1;
            self.state.best_after_epoch = Some(epoch + 1);
        }
        self.save(best)?;
        Ok((result, ema))
    }

    /// Seeds libtorch's generator per micro-batch and rank, so dropout/drop-path draws depend only
    /// on (seed, rank, position in training) and a resumed run repeats them exactly.
    fn seed_micro_batch(&self, micro_step: u64) {
        let rank = (self.dist.rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let seed = self.config.train.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro_step ^ rank;
        tch::manual_seed((seed >> 1) as i64);
    }

    fn reached_max_steps(&self) -> bool {
        let max = self.config.train.max_steps as u64;
        max > 0 && self.state.step >= max
    }

    fn train_epoch(&mut self, epoch: u64) -> Result<EpochEnd> {
        let accum = self.config.train.accum_steps as u64;
        let batches = self.steps_per_epoch as u64 * accum;
        let start = self.state.batch_in_epoch;
        // The bar's length (and ETA) stops where train.max_steps does.
        let mut steps = self.steps_per_epoch as u64;
        let max = self.config.train.max_steps as u64;
        if max > 0 {
            steps = steps.min(start / accum + max.saturating_sub(self.state.step));
        }
        self.observers.epoch_started(epoch, start / accum, steps);
        let end = self.run_batches(epoch, start, batches, accum);
        self.observers.epoch_ended();
        end
    }

    fn run_batches(&mut self, epoch: u64, start: u64, batches: u64, accum: u64) -> Result<EpochEnd> {
        let mut window = Window::start();
        // The step's loss, summed on the device over its micro-batches; only for logged steps.
        let mut step_loss: Option<Tensor> = None;
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
            let last_micro_batch = (batch.index + 1).is_multiple_of(accum);
            let logged = (self.state.step + 1).is_multiple_of(self.config.logging.every_steps as u64);
            // The last micro-batch also updates the weights (one call, so a CUDA graph can hold both).
            let lr = self.schedule.lr(self.state.step as usize);
            let kind = if last_micro_batch {
                MicroBatch::Update { lr, want_grad_norm: logged }
            } else {
                MicroBatch::Accumulate
            };
            let (images, targets) = self.inputs.prepare(&batch);
            let (loss, report) = self.engine.micro_batch(&images, &targets, kind).with_context(|| {
                format!("at step {} (epoch {}, batch {})", self.state.step, batch.epoch + 1, batch.index)
            })?;
            if logged {
                let share = loss / accum as f64;
                step_loss = Some(step_loss.map_or_else(|| share.shallow_clone(), |sum| sum + &share));
            }
            window.images += batch.n;
            self.train_loader.recycle(batch.images);
            let Some(report) = report else {
                waiting_since = Instant::now();
                continue;
            };
            if report.skipped {
                self.state.skipped_steps += 1;
            }
            self.state.step += 1;
            self.state.batch_in_epoch = batch.index + 1;
            self.observers.stepped(self.state.batch_in_epoch / accum);
            if let Some(loss) = step_loss.take() {
                self.check_losses_finite()?;
                self.log_step(epoch, loss.double_value(&[]), lr, report.grad_norm, &mut window)?;
            }
            let every = self.config.train.checkpoint_every_steps as u64;
            if every > 0 && self.state.step.is_multiple_of(every) {
                self.save(false)?;
            }
            if self.stop_requested(logged)? {
                return Ok(EpochEnd::Interrupted);
            }
            if self.reached_max_steps() {
                return Ok(EpochEnd::MaxSteps);
            }
            waiting_since = Instant::now();
        }
        let bad = iter.bad_files();
        if bad.count > 0 {
            // The loader already printed the paths; keep the count for scripts.
            let values = [("count", bad.count as f64)];
            let record = Record::new(Section::Event("bad_files"), self.state.step, epoch + 1, &values);
            self.observers.record(&record)?;
        }
        Ok(EpochEnd::Completed)
    }

    /// Fails, naming the steps, if a loss since the last check was NaN or infinite. Checked at
    /// logging steps and before each checkpoint rather than per micro-batch, which would make the
    /// host wait for the device every step; weights a bad loss updated are never saved.
    fn check_losses_finite(&mut self) -> Result<()> {
        let (from, to) = (self.losses_checked_at, self.state.step);
        if !self.engine.losses_were_finite()? {
            bail!(
                "the loss became NaN or infinite between step {from} and step {to}; the last checkpoint \
                 holds the weights from before (a lower optimizer.lr, optimizer.clip_grad or \
                 train.amp = \"bf16\" may help)"
            );
        }
        self.losses_checked_at = to;
        Ok(())
    }

    /// Whether a signal asks the run to stop after this step. With several processes the ranks must
    /// agree on the step, which costs a collective and a host sync: they agree at logging steps only.
    fn stop_requested(&self, logged: bool) -> Result<bool> {
        let pressed = self.stop.is_requested();
        if self.dist.world == 1 {
            return Ok(pressed);
        }
        Ok(logged && self.dist.any(pressed)?)
    }

    fn log_step(
        &mut self,
        epoch: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        window: &mut Window,
    ) -> Result<()> {
        let seconds = window.started.elapsed().as_secs_f64().max(1e-9);
        // Images per second of the whole run: every rank trains the same number per step.
        let img_per_s = (window.images * self.dist.world) as f64 / seconds;
        let data_wait = (window.data_wait / seconds).min(1.0);
        let mut train = vec![("loss", loss), ("lr", lr), ("grad_norm", grad_norm)];
        if let Some(scale) = self.engine.loss_scale() {
            train.push(("loss_scale", scale));
            train.push(("skipped_steps", self.state.skipped_steps as f64));
        }
        let mut perf = vec![("img_per_s", img_per_s), ("data_wait_fraction", data_wait)];
        if let Some(hidden) = self.engine.allreduce_hidden_share()? {
            perf.push(("allreduce_hidden_share", hidden));
        }
        let (step, epoch) = (self.state.step, epoch + 1);
        for (section, values) in [(Section::Train, train.as_slice()), (Section::Perf, perf.as_slice())] {
            self.observers.record(&Record::new(section, step, epoch, values))?;
        }
        *window = Window::start();
        Ok(())
    }

    fn log_sample_images(&mut self, batch: &pe_data::Batch) -> Result<()> {
        let count = self.config.logging.sample_images.min(batch.n);
        let plane = 3 * batch.h * batch.w;
        for i in 0..count {
            let chw = &batch.images[i * plane..(i + 1) * plane];
            self.observers.image(&format!("inputs/{i}"), chw, batch.h, batch.w, 0)?;
        }
        Ok(())
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
