//! Observers: every metric of a run is recorded once and fanned out to the sinks that show or keep
//! it (TensorBoard, metrics.jsonl, the console, the progress bar). Only rank 0 has sinks; on other
//! ranks recording is a no-op, so the loop never asks who it is before logging.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::config::load::{recipe_key, to_toml};
use crate::config::ExperimentConfig;
use crate::train::checkpoint::LogMark;
use crate::train::init_weights::InitIdentity;
use crate::train::metrics::{Keep, MetricsLog};
use crate::train::tensorboard::{self, EventWriter, HParam};

/// Which stream a record belongs to: TensorBoard tags are `{section}/{name}`, metrics.jsonl records
/// carry `"type": section`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Train,
    /// Throughput: images per second, the share of time spent waiting for data.
    Perf,
    Eval,
    EvalEma,
    /// Bookkeeping that is not a curve (e.g. unreadable files per epoch): metrics.jsonl only.
    Event(&'static str),
}

impl Section {
    /// The tag prefix (`eval`, `eval_ema`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Section::Train => "train",
            Section::Perf => "perf",
            Section::Eval => "eval",
            Section::EvalEma => "eval_ema",
            Section::Event(name) => name,
        }
    }
}

/// One record: named values at an optimizer step of an epoch (1-based, as printed).
pub struct Record<'a> {
    pub section: Section,
    pub step: u64,
    pub epoch: u64,
    /// True when the step is inside its epoch (an evaluation that `train.max_steps` brought
    /// forward), not at its end.
    pub within_epoch: bool,
    pub values: &'a [(&'static str, f64)],
}

impl<'a> Record<'a> {
    /// A record at `step` of `epoch` (1-based).
    pub fn new(section: Section, step: u64, epoch: u64, values: &'a [(&'static str, f64)]) -> Self {
        Self { section, step, epoch, within_epoch: false, values }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// A sink for records. Epoch boundaries and checkpoints are announced so that sinks can draw
/// bars and make what they hold durable.
pub trait Observer {
    fn record(&mut self, record: &Record) -> Result<()>;
    /// An epoch of `steps` optimizer steps starts (at `done` when resuming inside it).
    fn epoch_started(&mut self, _epoch: u64, _done: u64, _steps: u64) {}
    /// An optimizer step finished; `done` steps of the epoch are behind.
    fn stepped(&mut self, _done: u64) {}
    /// The epoch's steps are over (or the run stops inside it).
    fn epoch_ended(&mut self) {}
    /// An image (`[3, h, w]` planes) at `step`: the inputs seen at the start, confusion figures.
    fn image(&mut self, _tag: &str, _chw: &[u8], _h: usize, _w: usize, _step: u64) -> Result<()> {
        Ok(())
    }
    /// A Markdown text at `step` (the per-class summary of an evaluation).
    fn text(&mut self, _tag: &str, _text: &str, _step: u64) -> Result<()> {
        Ok(())
    }
    /// A weight-space analysis of the model (`logging.analyze_every_epochs`).
    fn analysis(&mut self, _report: &pe_analyze::Report, _step: u64) -> Result<()> {
        Ok(())
    }
    /// A line for the person watching the run (what it resolved, where it resumed, the result).
    fn say(&mut self, _text: &str) {}
    /// The run ended; `finished` is false when it stopped early (Ctrl-C).
    fn run_ended(&mut self, _finished: bool) -> Result<()> {
        Ok(())
    }
    /// Make everything recorded so far durable (called whenever a checkpoint is published, so a
    /// killed run loses no logged point up to its last checkpoint).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How a start finds the run's logs.
pub enum LogStart<'a> {
    /// No checkpoint: whatever earlier starts logged is dropped and the run logs afresh.
    Fresh,
    /// Resuming from the checkpoint at `step`: what was logged after it (by the stretch of
    /// training now redone) is cut, to `mark` where the checkpoint kept one.
    Continue { step: u64, mark: Option<&'a LogMark> },
}

/// The run's sinks (empty on ranks other than 0).
#[derive(Default)]
pub struct Observers {
    sinks: Vec<Box<dyn Observer>>,
    /// The two log files, whose lengths a checkpoint records.
    files: Option<LogFiles>,
}

struct LogFiles {
    metrics: PathBuf,
    events: PathBuf,
}

impl Observers {
    /// TensorBoard events (a fresh run's start with the resolved recipe as text and its key values
    /// as an HParams session), metrics.jsonl, the console and (on a terminal) a progress bar. What
    /// a resumed run's logs held beyond its checkpoint is cut first: each curve is one history.
    /// `init`: the weights `model.init` started the run from (their digest is an HParam).
    pub fn for_run(
        run_dir: &Path,
        config: &ExperimentConfig,
        init: Option<&InitIdentity>,
        start: &LogStart,
    ) -> Result<Self> {
        let (progress, epochs) = (config.logging.progress, config.train.epochs as u64);
        let metrics_path = run_dir.join("metrics.jsonl");
        let keep = match start {
            LogStart::Fresh => Keep::Nothing,
            LogStart::Continue { mark: Some(mark), .. } => Keep::Bytes(mark.metrics_bytes),
            LogStart::Continue { step, mark: None } => Keep::UpToStep(*step),
        };
        let metrics = MetricsLog::open(&metrics_path, keep)?;
        let kept_events = match start {
            LogStart::Fresh => None,
            LogStart::Continue { mark, .. } => mark.map(|m| (m.events_file.as_str(), m.events_bytes)),
        };
        // An old checkpoint (no mark) keeps every event file: the session start below hides the
        // points after it from TensorBoard.
        if !matches!(start, LogStart::Continue { mark: None, .. }) {
            tensorboard::cut_back(run_dir, kept_events)?;
        }
        let mut events = EventWriter::create(run_dir).context("creating the TensorBoard event file")?;
        match start {
            LogStart::Fresh => {
                events.text("config", &format!("```toml\n{}\n```", to_toml(config)), 0)?;
                events.hparams(&hparams(config, init)?, METRIC_TAGS)?;
            }
            // For a TensorBoard that had already read the points now cut.
            LogStart::Continue { step, .. } => events.session_start(step + 1)?,
        }
        let files = LogFiles { metrics: metrics_path, events: events.path().to_owned() };
        let bar = progress && std::io::stderr().is_terminal();
        let console = Console { step_lines: !bar, last_train: None };
        let mut sinks: Vec<Box<dyn Observer>> =
            vec![Box::new(TensorBoard(events)), Box::new(Jsonl(metrics)), Box::new(console)];
        if bar {
            sinks.push(Box::new(Progress { bar: None, epochs }));
        }
        Ok(Self { sinks, files: Some(files) })
    }

    /// Where the log files end now (call after [`Observers::flush`]); `None` without sinks.
    pub fn log_mark(&self) -> Result<Option<LogMark>> {
        let Some(files) = &self.files else { return Ok(None) };
        let length = |path: &Path| -> Result<u64> {
            Ok(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len())
        };
        Ok(Some(LogMark {
            metrics_bytes: length(&files.metrics)?,
            events_file: files.events.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            events_bytes: length(&files.events)?,
        }))
    }

    /// No sinks: what ranks other than 0 use.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn record(&mut self, record: &Record) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.record(record))
    }

    pub fn epoch_started(&mut self, epoch: u64, done: u64, steps: u64) {
        self.sinks.iter_mut().for_each(|s| s.epoch_started(epoch, done, steps));
    }

    pub fn stepped(&mut self, done: u64) {
        self.sinks.iter_mut().for_each(|s| s.stepped(done));
    }

    pub fn epoch_ended(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.epoch_ended());
    }

    pub fn image(&mut self, tag: &str, chw: &[u8], h: usize, w: usize, step: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.image(tag, chw, h, w, step))
    }

    pub fn text(&mut self, tag: &str, text: &str, step: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.text(tag, text, step))
    }

    pub fn analysis(&mut self, report: &pe_analyze::Report, step: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.analysis(report, step))
    }

    pub fn say(&mut self, text: &str) {
        self.sinks.iter_mut().for_each(|s| s.say(text));
    }

    pub fn run_ended(&mut self, finished: bool) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.run_ended(finished))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }
}

/// The metrics the HParams dashboard shows beside each run's hyper-parameters.
const METRIC_TAGS: &[&str] = &["eval/acc1", "eval/acc5", "eval/loss", "eval_ema/acc1"];

/// Keys that say where or how fast a run computes, not what: left out of the HParams table.
const NOT_HPARAMS: &[&str] = &[
    "name",
    "logging.",
    "eval.",
    "data.root",
    "data.workers",
    "data.prefetch",
    "train.device",
    "train.threads",
    "train.dist_",
    "train.checkpoint_every_steps",
    "train.keep_",
];

/// The resolved recipe's values as HParams (dotted keys as a recipe spells them), without the
/// bookkeeping ones; with `model.init`, the digest of the weights read too.
fn hparams(config: &ExperimentConfig, init: Option<&InitIdentity>) -> Result<BTreeMap<String, HParam>> {
    let mut all: BTreeMap<String, HParam> = HParam::flatten(&serde_json::to_value(config)?)
        .into_iter()
        .map(|(key, value)| (recipe_key(&key), value))
        .collect();
    all.retain(|key, _| {
        !NOT_HPARAMS.iter().any(|skip| key == skip.trim_end_matches('.') || key.starts_with(skip))
    });
    if let Some(init) = init {
        all.insert("model.init_digest".into(), HParam::Text(init.digest.clone()));
    }
    Ok(all)
}

/// TensorBoard scalars `{section}/{name}` (non-finite values are skipped: a NaN "not measured"
/// grad norm is no point on a curve).
struct TensorBoard(EventWriter);

impl Observer for TensorBoard {
    fn record(&mut self, record: &Record) -> Result<()> {
        if let Section::Event(_) = record.section {
            return Ok(());
        }
        for (name, value) in record.values {
            if value.is_finite() {
                self.0.scalar(&format!("{}/{name}", record.section.name()), *value, record.step)?;
            }
        }
        Ok(())
    }

    fn image(&mut self, tag: &str, chw: &[u8], h: usize, w: usize, step: u64) -> Result<()> {
        Ok(self.0.image_chw(tag, chw, h, w, step)?)
    }

    fn text(&mut self, tag: &str, text: &str, step: u64) -> Result<()> {
        Ok(self.0.text(tag, text, step)?)
    }

    fn analysis(&mut self, report: &pe_analyze::Report, step: u64) -> Result<()> {
        Ok(pe_analyze::log_to_tensorboard(report, &mut self.0, step)?)
    }

    fn run_ended(&mut self, finished: bool) -> Result<()> {
        Ok(self.0.hparams_end(finished)?)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.0.flush()?)
    }
}

/// metrics.jsonl: `{"type": section, "step", "epoch", name: value...}`; NaN becomes null.
struct Jsonl(MetricsLog);

impl Observer for Jsonl {
    fn record(&mut self, record: &Record) -> Result<()> {
        let mut object = Map::new();
        object.insert("type".into(), json!(record.section.name()));
        object.insert("step".into(), json!(record.step));
        object.insert("epoch".into(), json!(record.epoch));
        for (name, value) in record.values {
            let value = if value.is_finite() { json!(value) } else { Value::Null };
            object.insert((*name).into(), value);
        }
        Ok(self.0.write(&Value::Object(object))?)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.0.sync()?)
    }
}

/// The lines a user reads in the terminal (or a log file): evaluations, what the run says, and,
/// without a progress bar (stderr not a terminal: CI, `nohup`, SLURM's output files), one line
/// per logged step.
struct Console {
    step_lines: bool,
    /// The logged step's loss and learning rate, printed with its throughput (the next record).
    last_train: Option<(f64, f64)>,
}

impl Observer for Console {
    fn record(&mut self, record: &Record) -> Result<()> {
        match record.section {
            Section::Train if self.step_lines => {
                self.last_train = record.get("loss").zip(record.get("lr"));
            }
            Section::Perf if self.step_lines => {
                if let Some((loss, lr)) = self.last_train.take() {
                    let rate = record.get("img_per_s").map(|r| format!(", {r:.1} img/s")).unwrap_or_default();
                    print_line(&format!(
                        "epoch {} step {}: loss {loss:.4} lr {lr:.2e}{rate}",
                        record.epoch, record.step
                    ));
                }
            }
            Section::Eval | Section::EvalEma => {
                let (Some(acc1), Some(acc5), Some(loss)) =
                    (record.get("acc1"), record.get("acc5"), record.get("loss"))
                else {
                    return Ok(());
                };
                let when = if record.within_epoch {
                    format!("step {} (inside epoch {}, train.max_steps reached)", record.step, record.epoch)
                } else {
                    format!("epoch {}", record.epoch)
                };
                if record.section == Section::Eval {
                    let left_out =
                        record.get("unreadable").map(|n| format!(" ({n} unreadable images left out)"));
                    print_line(&format!(
                        "{when} eval: top-1 {acc1:.2}% top-5 {acc5:.2}% loss {loss:.4}{}",
                        left_out.unwrap_or_default()
                    ));
                } else {
                    print_line(&format!("{when} eval (EMA): top-1 {acc1:.2}% top-5 {acc5:.2}%"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn say(&mut self, text: &str) {
        print_line(text);
    }
}

/// One line to stdout. A closed stdout (`pe train ... | head`) is not the run's failure: the line
/// is dropped, and the run trains on (its logs and checkpoints are in the run folder).
fn print_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// A progress bar per epoch, with the last loss and learning rate.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    epochs: u64,
}

impl Observer for Progress {
    fn record(&mut self, record: &Record) -> Result<()> {
        if let (Some(bar), Section::Train) = (&self.bar, record.section) {
            if let (Some(loss), Some(lr)) = (record.get("loss"), record.get("lr")) {
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
            }
        }
        Ok(())
    }

    fn stepped(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn epoch_started(&mut self, epoch: u64, done: u64, steps: u64) {
        let bar = indicatif::ProgressBar::new(steps).with_position(done);
        let style = indicatif::ProgressStyle::with_template(
            "epoch {prefix} {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}, {rate}] {msg}",
        )
        .expect("a valid progress template")
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2} steps/s", state.per_sec());
        });
        bar.set_style(style);
        bar.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        self.bar = Some(bar);
    }

    fn epoch_ended(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
