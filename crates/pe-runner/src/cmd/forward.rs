//! `pe forward`: builds a model, optionally loads or saves its weights, and runs it on tensors
//! read from a safetensors file; the interop path the PyTorch parity tests drive.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use pe_models::{weights, ModelConfig};

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Registry model name.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    model: Option<String>,
    /// A model config as JSON (`{"arch": "vit", ...}`), for geometries the registry lacks.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Weights to load (strictly; PyTorch state-dict names).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where to write the model's weights (after loading, before running).
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Input tensors: `x` [B, C, H, W]; optional `grad_output` [B, classes] for --grads.
    #[arg(long, requires = "output")]
    input: Option<PathBuf>,
    /// Output tensors: `logits`, `grad.<name>` for each --grads parameter, and for a distilled
    /// ViT each head's logits apart (`heads.class`, `heads.dist`).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Training mode (batch statistics in BN, dropout/drop-path active).
    #[arg(long)]
    train: bool,
    /// Comma-separated parameter names whose gradient of sum(logits × grad_output) to write.
    #[arg(long, value_delimiter = ',')]
    grads: Vec<String>,
    /// Seed for the weight initialisation.
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

fn model_config(args: &ForwardArgs) -> Result<ModelConfig> {
    if let Some(name) = &args.model {
        return pe_models::preset(name).map_err(anyhow::Error::msg);
    }
    let path = args.config.as_ref().expect("clap requires --model or --config");
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
    let config: ModelConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing model config {}", path.display()))?;
    config.validate().map_err(|e| anyhow::anyhow!("model config {}: {e}", path.display()))?;
    Ok(config)
}

pub fn run(args: ForwardArgs) -> Result<()> {
    tch::manual_seed(args.seed);
    let config = model_config(&args)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = config.init(vs.root())?;
    if let Some(path) = &args.weights {
        weights::load(&vs, path)?;
    }
    if let Some(path) = &args.save_weights {
        weights::save(&vs, path)?;
    }
    let (Some(input), Some(output)) = (&args.input, &args.output) else {
        return Ok(());
    };
    let tensors = Tensor::read_safetensors(input).with_context(|| format!("reading {}", input.display()))?;
    let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
    let xs = find("x").with_context(|| format!("{} has no tensor named \"x\"", input.display()))?;
    let xs = xs.to_kind(Kind::Float);
    let logits = model.forward_t(&xs, args.train);
    let mut results = vec![("logits".to_owned(), logits.detach())];
    if model.is_distilled() {
        let heads = tch::no_grad(|| model.forward_heads(&xs, args.train));
        results.push(("heads.class".to_owned(), heads.class));
        results.extend(heads.dist.map(|dist| ("heads.dist".to_owned(), dist)));
    }
    if !args.grads.is_empty() {
        let grad_output = find("grad_output").unwrap_or_else(|| logits.ones_like());
        (&logits * grad_output.to_kind(Kind::Float)).sum(Kind::Float).backward();
        let variables = vs.variables();
        for name in &args.grads {
            let Some(var) = variables.get(name) else {
                bail!("--grads: the model has no parameter {name:?}")
            };
            results.push((format!("grad.{name}"), var.grad()));
        }
    }
    Tensor::write_safetensors(&results, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}
