//! Running the shipped recipes (experiments/*.toml) end to end, on this machine's CPU (CI) or on
//! a CUDA GPU with each recipe's own autocast: the recipe walk both test files share.

use std::path::{Path, PathBuf};

use pe_models::ModelConfig;
use pe_runner::config::load_experiment;

use super::{pe, run_ok, step_losses};

/// Where the recipes train, and so which of their settings must be overridden to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// This 2-core CI machine: 32-pixel inputs, batch 4, one thread, autocast off (bf16 on this
    /// CPU is slow; it is tested on its own in train.rs).
    Cpu,
    /// `cuda:0` with the recipe's own autocast (bf16) and memory format: 64-pixel inputs, batch 16.
    Cuda,
}

/// Every experiments/*.toml, sorted.
pub fn recipes() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 13, "found only {recipes:?}");
    recipes
}

/// Recipes that start from what `pe convert` wrote (`model.init = ".../runs/<folder>/model.safetensors"`):
/// the folder, the baseline recipe's run it converts, and the PE twin. The walk converts the
/// baseline's run (trained earlier: its name sorts first) into that folder before the recipe trains.
const CONVERSIONS: &[(&str, &str, &str)] =
    &[("vit_pe_small_from_deit_small_300e", "deit_small_300e", "vit_pe_small")];

/// The conversion `init` (a recipe's `model.init`) names, if it is one of [`CONVERSIONS`].
fn conversion(init: &Path) -> Option<(&'static str, &'static str, &'static str)> {
    let folder = init.parent()?.file_name()?;
    CONVERSIONS.iter().copied().find(|(name, ..)| folder == *name)
}

/// The `--set` overrides that fit `recipe` to `machine`: data root (a generated ImageFolder of 3
/// classes), class count, input size, batch sizes, device, runs folder, logging every step and
/// `train.max_steps`. Everything else — channels_last, Mixup/CutMix, RandAugment, random erasing,
/// repeated augmentation, EMA, drop-path, SGD or AdamW, warmup — is the recipe's own.
pub fn overrides(recipe: &Path, data: &Path, runs: &Path, max_steps: u32, machine: Machine) -> Vec<String> {
    let config = load_experiment(recipe, &[]).unwrap().config;
    let (side, batch) = match machine {
        Machine::Cpu => (32, 4),
        Machine::Cuda => (64, 16),
    };
    let mut sets = vec![
        format!("data.root={data:?}"),
        "model.num_classes=3".into(),
        format!("data.img_size={side}"),
        format!("train.batch_size={batch}"),
        "eval.batch_size=8".into(),
        format!("logging.runs_dir={runs:?}"),
        "logging.progress=false".into(),
        "logging.every_steps=1".into(),
        format!("train.max_steps={max_steps}"),
    ];
    match machine {
        Machine::Cpu => sets.extend([
            "train.device=\"cpu\"".into(),
            "train.amp=\"off\"".into(),
            "train.threads=1".into(),
            "data.workers=1".into(),
        ]),
        Machine::Cuda => sets.extend(["train.device=\"cuda\"".into(), "data.workers=4".into()]),
    }
    if let ModelConfig::Vit(_) = config.model {
        sets.push(format!("model.img_size={side}"));
    }
    // A fine-tune starts from its parent recipe's run (`model.init = ".../runs/<parent>"`): the
    // parent's run in this runs folder, trained earlier in the walk (its name sorts first).
    // A converted start is that folder's weights file in this runs folder.
    if let Some(init) = config.model_init.init.as_ref() {
        match conversion(init) {
            Some((folder, ..)) => {
                sets.push(format!("model.init={:?}", runs.join(folder).join("model.safetensors")))
            }
            None => sets.push(format!("model.init={:?}", runs.join(init.file_name().unwrap()))),
        }
    }
    // A teacher is its recipe's run in this runs folder, trained earlier in the walk likewise.
    if let Some(distill) = &config.distill {
        sets.push(format!("distill.teacher={:?}", runs.join(distill.teacher.file_name().unwrap())));
    }
    sets.into_iter().flat_map(|set| ["--set".to_owned(), set]).collect()
}

/// The data `train_resume_evaluate` expects: 3 classes, 3 validation images each.
pub fn write_data(root: &Path, machine: Machine) {
    match machine {
        Machine::Cpu => super::tiny_image_folder(root, 3, 8, 3, 40),
        Machine::Cuda => super::tiny_image_folder(root, 3, 24, 3, 80),
    }
}

/// Trains `recipe` for 2 optimizer steps (publishing a checkpoint), resumes to step 3, then has
/// `pe eval` read the last checkpoint. Returns the run folder.
pub fn train_resume_evaluate(recipe: &Path, data: &Path, runs: &Path, machine: Machine) -> PathBuf {
    let config = load_experiment(recipe, &[]).unwrap().config;
    let name = config.name;
    if let Some((folder, baseline, twin)) = config.model_init.init.as_deref().and_then(conversion) {
        let mut convert = pe();
        convert.arg("convert").arg(runs.join(baseline)).args(["--to", twin, "--images", "0"]);
        convert.arg("--out").arg(runs.join(folder));
        run_ok(&mut convert, &format!("{name}: pe convert {baseline} --to {twin}"));
    }
    let train = |max_steps, extra: &[&str]| {
        let sets = overrides(recipe, data, runs, max_steps, machine);
        let what = format!("{name}: train to step {max_steps} ({machine:?})");
        run_ok(pe().arg("train").arg(recipe).args(sets).args(extra), &what)
    };
    train(2, &[]);
    let run = runs.join(&name);
    let first = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    assert!(first.ends_with("step-000000002"), "{name}: {}", first.display());

    // Running longer is a change the resume must be told about.
    let resumed = train(3, &["--resume", "--allow-change", "train.max_steps"]);
    assert!(resumed.contains("resumed from") && resumed.contains("step 2"), "{name}: {resumed}");
    assert_eq!(step_losses(&run).iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3], "{name}");
    assert!(step_losses(&run).iter().all(|(_, loss)| loss.is_finite()), "{name}: {:?}", step_losses(&run));

    let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    let sets = overrides(recipe, data, runs, 3, machine);
    let mut eval = pe();
    eval.arg("eval").arg(recipe).arg("--checkpoint").arg(&last).args(sets);
    let evaluated = run_ok(&mut eval, &format!("{name}: pe eval ({machine:?})"));
    assert!(evaluated.contains("on 9 images"), "{name}: {evaluated}");
    run
}
