//! `pe eval`: evaluates checkpoints as papers report them: top-1/top-5 (and ImageNet-ReaL) on a
//! validation split or a robustness set in its official layout, per class with the confusion
//! matrix, per image, at several input sizes and crops, several checkpoints side by side.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tch::nn::ModuleT;
use tch::Device;

use pe_data::{Loader, Split};

use crate::config::{load_experiment, ExperimentConfig};
use crate::eval::figure;
use crate::eval::labels::{ClassMap, EvalSetError, Targets};
use crate::eval::predictions::{self, PredictionsWriter};
use crate::eval::report::{self, Evaluated, Format};
use crate::train::amp::Precision;
use crate::train::batch::Normalizer;
use crate::train::evaluate::{evaluate, Evaluation, Keep};
use crate::train::trained::Trained;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folders or checkpoint folders (each evaluated with its own recipe), or one recipe TOML
    /// with --checkpoint.
    #[arg(required = true, value_name = "RUN|CHECKPOINT|RECIPE.toml")]
    pub sources: Vec<PathBuf>,
    /// With a recipe TOML: a checkpoint folder (`runs/NAME/checkpoints/best`) or a `.safetensors`
    /// weights file.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate each checkpoint's EMA weights where it has them.
    #[arg(long)]
    pub ema: bool,
    /// Override a recipe key, e.g. `--set data.root=/data/imagenet-v2` to evaluate on other data.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Input sides to evaluate at (default: the recipe's `data.img_size`); a ViT's position
    /// embedding is resampled to each.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub img_size: Vec<usize>,
    /// Centre-crop fractions (resize to `img_size / crop_pct`, crop `img_size`; default: the
    /// recipe's `data.crop_pct`).
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    pub crop_pct: Vec<f64>,
    /// How the split's folders name classes: `names` (the run's classes), `index` (folders
    /// `0`…`N-1`, ImageNet-V2), `subset` (a subset of the run's classes, the argmax restricted to
    /// them: ImageNet-A/R), or a file of `folder class` lines.
    #[arg(long, default_value = "names", value_name = "names|index|subset|FILE")]
    pub class_map: ClassMap,
    /// ImageNet-ReaL's `real.json`: per image in file-name order, its correct class indices.
    #[arg(long, value_name = "real.json")]
    pub labels: Option<PathBuf>,
    /// Per-class recall, precision and F1, the worst classes and the most-confused pairs.
    #[arg(long)]
    pub per_class: bool,
    /// How stdout reports (other messages go to stderr).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Classes and pairs in the --per-class summary.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub worst: usize,
    /// Write the confusion figure (SVG) here; with several evaluations, one per evaluation named
    /// after it.
    #[arg(long, value_name = "FILE.svg")]
    pub confusion: Option<PathBuf>,
    /// Write every image's label and top classes with probabilities (`.csv` or `.jsonl`).
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Classes per image in --predictions.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub topk: usize,
}

/// The validation split of `config`, labels numbered by `classes` (a run's list) or by the
/// split's own folders; says (on stderr) which classes it has no image of.
pub fn validation_loader(config: &ExperimentConfig, classes: Option<&[String]>) -> Result<Loader> {
    let split = Split::Eval { batch_size: config.eval_batch_size(), classes };
    let loader =
        Loader::open_with_cache(&config.data, split, 0, 1, &config.scan_cache()).with_context(|| {
            format!("opening the validation split of {:?} (see data/README.md)", config.data.root)
        })?;
    if !loader.missing_classes().is_empty() {
        eprintln!(
            "warning: the validation split has no images of {} class(es): {}",
            loader.missing_classes().len(),
            loader.missing_classes().join(", ")
        );
    }
    Ok(loader)
}

/// `model` on `loader` against `targets` with the recipe's normalisation and precision;
/// unreadable files are reported on stderr and left out.
pub fn evaluate_with_recipe(
    model: &impl ModuleT,
    loader: &Loader,
    config: &ExperimentConfig,
    device: Device,
    targets: &Targets,
    keep: Keep,
) -> Result<Evaluation> {
    let normalizer = Normalizer::new(config.data.mean, config.data.std, device);
    let precision = Precision { amp: config.train.amp, channels_last: false };
    let evaluation = evaluate(model, loader, &normalizer, device, &precision, targets, keep)?;
    if evaluation.bad.count > 0 {
        eprintln!("warning: {}: left out {}", loader.location().display(), evaluation.bad);
    }
    Ok(evaluation)
}

/// The checkpoints to evaluate, each with the label the tables show.
fn sources(args: &EvalArgs) -> Result<Vec<(String, Trained)>> {
    let is_recipe = |p: &Path| p.extension().is_some_and(|e| e == "toml");
    if let Some(checkpoint) = &args.checkpoint {
        let [recipe] = args.sources.as_slice() else {
            bail!("--checkpoint goes with one recipe TOML; name run or checkpoint folders without it");
        };
        if !is_recipe(recipe) {
            bail!("{}: --checkpoint goes with a recipe (.toml)", recipe.display());
        }
        let config = load_experiment(recipe, &args.overrides)?.config;
        let trained = Trained::with_recipe(config, checkpoint, args.ema)?;
        return Ok(vec![(trained.weights.display().to_string(), trained)]);
    }
    let mut sources = Vec::new();
    let mut any_ema = false;
    for source in &args.sources {
        if is_recipe(source) {
            bail!("{}: a recipe needs --checkpoint (or name a run folder instead)", source.display());
        }
        let label = source.display().to_string();
        let trained = match Trained::resolve(source, args.ema, None, &args.overrides) {
            Ok(trained) => {
                any_ema |= args.ema;
                (if args.ema { format!("{label} (EMA)") } else { label }, trained)
            }
            Err(error) if args.ema && args.sources.len() > 1 => {
                eprintln!("note: {label}: no EMA weights ({error:#}): evaluating its trained weights");
                (format!("{label} (no EMA)"), Trained::resolve(source, false, None, &args.overrides)?)
            }
            Err(error) => return Err(error),
        };
        sources.push(trained);
    }
    if args.ema && !any_ema {
        bail!("--ema: none of the checkpoints has EMA weights (they trained with train.ema_decay = 0)");
    }
    Ok(sources)
}

/// The split `config` names, and how its labels read for a model of `classes` (the run's list, or
/// the split's folders for a bare weights file).
fn open_set(
    config: &ExperimentConfig,
    classes: Option<&[String]>,
    num_classes: usize,
    args: &EvalArgs,
) -> Result<(Loader, Targets)> {
    let by_names = args.class_map == ClassMap::Names;
    let loader = validation_loader(config, if by_names { classes } else { None }).map_err(|error| {
        let unknown_folder = error.chain().any(|e| e.to_string().contains("not in the run's class list"));
        match unknown_folder {
            true => EvalSetError(format!(
                "{error:#}; an ImageNet-V2 layout (folders 0..999) takes --class-map index, ImageNet-A/R \
                 (200 wnids) --class-map subset"
            ))
            .into(),
            false => error,
        }
    })?;
    let classes: Vec<String> = match (classes, &args.class_map) {
        (Some(classes), _) => classes.to_vec(),
        (None, ClassMap::Names) => loader.classes().to_vec(),
        (None, ClassMap::Index) => (0..num_classes).map(|i| i.to_string()).collect(),
        (None, _) => bail!(EvalSetError(
            "--class-map subset or a class-map file needs the checkpoint's class list: name a checkpoint \
             folder, not a bare weights file"
                .into()
        )),
    };
    if classes.len() != num_classes {
        bail!(EvalSetError(format!(
            "{}: {} classes, and the model has {num_classes} outputs",
            loader.location().display(),
            classes.len()
        )));
    }
    let targets = Targets::for_split(classes, &args.class_map, &loader)?;
    let targets = match &args.labels {
        Some(file) => targets.with_real_labels(file, &loader)?,
        None => targets,
    };
    Ok((loader, targets))
}

pub fn run(args: EvalArgs) -> Result<()> {
    let sources = sources(&args)?;
    let keep = Keep {
        confusion: args.per_class || args.confusion.is_some(),
        top_k: if args.predictions.is_some() { args.topk.max(1) } else { 0 },
    };
    let mut predictions = match &args.predictions {
        Some(path) => Some(PredictionsWriter::create(path, keep.top_k)?),
        None => None,
    };
    let with_size = !args.img_size.is_empty() || !args.crop_pct.is_empty();
    let mut done = Vec::new();
    for (label, trained) in &sources {
        let Some(recipe) = &trained.recipe else {
            bail!("{}: a bare weights file: give its recipe, `pe eval RECIPE.toml --checkpoint FILE`", label);
        };
        let device = recipe.train.device.resolve()?;
        let sizes = if args.img_size.is_empty() { vec![recipe.data.img_size] } else { args.img_size.clone() };
        let crops = if args.crop_pct.is_empty() { vec![recipe.data.crop_pct] } else { args.crop_pct.clone() };
        for &img_size in &sizes {
            let loaded = trained.load(img_size as i64, device)?;
            for line in &loaded.adapted {
                eprintln!("{label}: {line}");
            }
            for &crop_pct in &crops {
                let mut config = recipe.clone();
                config.data.img_size = img_size;
                config.data.crop_pct = crop_pct;
                config.data.validate().map_err(|e| EvalSetError(format!("--img-size/--crop-pct: {e}")))?;
                let num_classes = loaded.config.num_classes() as usize;
                let (loader, targets) = open_set(&config, trained.classes.as_deref(), num_classes, &args)?;
                let evaluation =
                    evaluate_with_recipe(&loaded.model, &loader, &config, device, &targets, keep)?;
                let result = evaluation.tally.result(targets.has_real())?;
                if let Some(writer) = predictions.as_mut() {
                    let context = predictions::RowContext { source: label, img_size, crop_pct };
                    write_predictions(writer, &context, &evaluation, &loader, &targets)?;
                }
                let evaluated = Evaluated {
                    source: label.clone(),
                    weights: trained.weights.clone(),
                    img_size,
                    crop_pct,
                    result,
                    classes: targets.classes.clone(),
                    confusion: evaluation.tally.confusion,
                };
                report::progress(&evaluated, with_size, args.format, args.per_class, args.worst);
                done.push(evaluated);
            }
        }
    }
    if let Some(writer) = predictions {
        writer.finish()?;
    }
    if let Some(svg) = &args.confusion {
        for evaluated in &done {
            let path = figure_path(svg, evaluated, done.len() > 1);
            let view = figure::top_confusions(
                &evaluated.confusion,
                evaluated.classes.len(),
                crate::eval::FIGURE_CLASSES,
            );
            let title = format!("{}: top-1 {:.2}%", evaluated.title(with_size), evaluated.result.acc1);
            pe_data::atomic_file::write(&path, figure::svg(&view, &evaluated.classes, &title))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    report::print(&done, with_size, args.format, args.per_class, args.worst)
}

fn write_predictions(
    writer: &mut PredictionsWriter,
    context: &predictions::RowContext,
    evaluation: &Evaluation,
    loader: &Loader,
    targets: &Targets,
) -> Result<()> {
    let name = |class: i64| targets.classes[class as usize].as_str();
    for p in &evaluation.predictions {
        let top: Vec<(&str, i64, f32)> = p.top.iter().map(|&(c, prob)| (name(c), c, prob)).collect();
        let file = loader.sample_path(p.index);
        let row = predictions::Row { file: &file, label: name(p.label), label_index: p.label, top: &top };
        writer.write(context, &row)?;
    }
    Ok(())
}

/// `out.svg`, or `out-<evaluation>.svg` when there are several.
fn figure_path(out: &Path, evaluated: &Evaluated, several: bool) -> PathBuf {
    if !several {
        return out.to_path_buf();
    }
    let tag: String = format!("{}-{}-{}", evaluated.source, evaluated.img_size, evaluated.crop_pct)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}-{tag}.svg"))
}
