//! `pe predict`: a trained model on a user's own images, with the recipe's eval preprocessing
//! (the same transform `pe eval` runs, byte for byte) and the run's class names, in words where
//! `pe prepare imagenet` stored the devkit's names beside the data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use pe_data::rng::{Rng, Stream};
use pe_data::transforms::Scratch;
use pe_data::Transform;

use crate::train::amp::Precision;
use crate::train::batch::Normalizer;
use crate::train::evaluate::eval_logits;
use crate::train::trained::Trained;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Per image its path, then its top classes with probabilities.
    Table,
    /// One JSON object per image and line (`{"file", "top": [{"class", "name", "index", "prob"}]}`,
    /// or `{"file", "error"}`).
    Json,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run folder (its best checkpoint, else last) or a checkpoint folder.
    #[arg(long, value_name = "RUN|CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Image files, or folders searched (recursively) for images.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub inputs: Vec<PathBuf>,
    /// Classes per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub topk: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Use the checkpoint's EMA weights.
    #[arg(long)]
    pub ema: bool,
    /// Override a recipe key, e.g. `--set train.device=cpu`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,
}

/// The images named by `inputs`: files as given, folders walked in sorted order.
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, files)?;
            } else if pe_data::index::is_image(&path) {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files)?;
        } else {
            // A missing or unreadable file is reported with the others' predictions.
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Display names of the run's classes: `words (wnid)` where the data root has the devkit's names.
fn display_names(classes: &[String], data_root: &Path) -> Result<Vec<Option<String>>> {
    let file = data_root.join(pe_data::CLASS_NAMES_FILE);
    if !file.is_file() {
        return Ok(vec![None; classes.len()]);
    }
    let words: std::collections::HashMap<String, String> =
        pe_data::read_class_names(&file)?.into_iter().collect();
    Ok(classes.iter().map(|c| words.get(c).cloned()).collect())
}

/// One image, preprocessed: `3 × size × size` bytes, or why it could not be read.
fn preprocess(transform: &Transform, scratch: &mut Scratch, file: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; transform.sample_len()];
    // The eval transform draws nothing; the generator is only its signature's.
    let mut rng = Rng::keyed(Stream::Sample, &[0]);
    transform.apply(&bytes, &mut rng, scratch, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn run(args: PredictArgs) -> Result<ExitCode> {
    if args.batch_size == 0 || args.topk == 0 {
        bail!("--batch-size and --topk must be at least 1");
    }
    let trained = Trained::resolve(&args.checkpoint, args.ema, None, &args.overrides)?;
    let (Some(config), Some(classes)) = (&trained.recipe, &trained.classes) else {
        bail!("{}: not a run's checkpoint (no recipe or class list beside it)", trained.weights.display());
    };
    let device = config.train.device.resolve()?;
    let loaded = trained.load(config.data.img_size as i64, device)?;
    let transform = Transform::eval(&config.data)?;
    let mut scratch = Scratch::new(transform.decoder);
    let names = display_names(classes, &config.data.root)?;
    let normalizer = Normalizer::new(config.data.mean, config.data.std, device);
    let precision = Precision { amp: config.train.amp, channels_last: false };
    let size = config.data.img_size as i64;
    let k = args.topk.min(classes.len());
    let files = image_files(&args.inputs)?;
    if files.is_empty() {
        bail!(
            "no images in {}",
            args.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let mut failed = 0;
    for chunk in files.chunks(args.batch_size) {
        let mut good = Vec::new();
        let mut pixels = Vec::new();
        for file in chunk {
            match preprocess(&transform, &mut scratch, file) {
                Ok(image) => {
                    pixels.extend_from_slice(&image);
                    good.push(file);
                }
                Err(reason) => {
                    failed += 1;
                    eprintln!("error: {}: {reason}", file.display());
                    if args.format == Format::Json {
                        println!("{}", json!({ "file": file.display().to_string(), "error": reason }));
                    }
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        let images = Tensor::from_slice(&pixels).view([good.len() as i64, 3, size, size]).to_device(device);
        let probs = tch::no_grad(|| eval_logits(&loaded.model, &images, &normalizer, device, &precision))?
            .softmax(1, Kind::Float);
        let (top_p, top_i) = probs.topk(k as i64, 1, true, true);
        let top_p = Vec::<f32>::try_from(top_p.reshape([-1]).to_device(Device::Cpu))?;
        let top_i = Vec::<i64>::try_from(top_i.reshape([-1]).to_device(Device::Cpu))?;
        for (n, file) in good.iter().enumerate() {
            let top = (n * k..(n + 1) * k).map(|j| (top_i[j] as usize, top_p[j]));
            match args.format {
                Format::Table => {
                    println!("{}", file.display());
                    for (class, prob) in top {
                        let name = match &names[class] {
                            Some(words) => format!("{words} ({})", classes[class]),
                            None => classes[class].clone(),
                        };
                        println!("  {:>7.3}%  {name}", 100.0 * prob);
                    }
                }
                Format::Json => {
                    let top: Vec<_> = top
                        .map(|(c, p)| json!({"class": classes[c], "name": names[c], "index": c, "prob": p}))
                        .collect();
                    println!("{}", json!({ "file": file.display().to_string(), "top": top }));
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
