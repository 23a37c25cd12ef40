//! Every shipped recipe (experiments/*.toml) trains end to end with its own settings: two
//! optimizer steps, a published checkpoint, a resume from it, evaluation, and `pe eval` reading
//! the checkpoint. A new recipe is covered without editing this test.
//!
//! Only what cannot fit this machine is overridden, the same for every recipe: the data root
//! (a generated ImageFolder of 3 classes), `model.num_classes = 3`, a 32-pixel input
//! (`data.img_size`, and `model.img_size` for ViTs), `train.batch_size = 4`, `eval.batch_size = 8`,
//! `train.device = "cpu"`, `train.amp = "off"` (bf16 autocast on this CPU is slow, and is tested on
//! its own in train.rs), `train.threads = 1`, `data.workers = 1`, the runs folder, logging every step and
//! `train.max_steps`. Everything else — channels_last, Mixup/CutMix, RandAugment, random erasing,
//! repeated augmentation, EMA, drop-path, SGD or AdamW, warmup — is the recipe's own.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pe_models::ModelConfig;
use pe_runner::config::load_experiment;

fn recipes() -> Vec<PathBuf> {
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

/// The overrides that fit a recipe to this machine (see the module comment).
fn overrides(recipe: &Path, data: &Path, runs: &Path, max_steps: u32) -> Vec<String> {
    let config = load_experiment(recipe, &[]).unwrap().config;
    let mut sets = vec![
        format!("data.root={data:?}"),
        "model.num_classes=3".into(),
        "data.img_size=32".into(),
        "train.batch_size=4".into(),
        "eval.batch_size=8".into(),
        "train.device=\"cpu\"".into(),
        "train.amp=\"off\"".into(),
        "train.threads=1".into(),
        "data.workers=1".into(),
        format!("logging.runs_dir={runs:?}"),
        "logging.progress=false".into(),
        "logging.every_steps=1".into(),
        format!("train.max_steps={max_steps}"),
    ];
    if let ModelConfig::Vit(_) = config.model {
        sets.push("model.img_size=32".into());
    }
    sets.into_iter().flat_map(|set| ["--set".to_owned(), set]).collect()
}

#[test]
fn every_shipped_recipe_trains_checkpoints_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 8, 3, 40);
    let runs = dir.path().join("runs");
    for recipe in recipes() {
        let name = load_experiment(&recipe, &[]).unwrap().config.name;
        let train = |max_steps, extra: &[&str]| {
            let sets = overrides(&recipe, &data, &runs, max_steps);
            let what = format!("{name}: train to step {max_steps}");
            run_ok(pe().arg("train").arg(&recipe).args(sets).args(extra), &what)
        };
        train(2, &[]);
        let run = runs.join(&name);
        let first = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
        assert!(first.ends_with("step-000000002"), "{name}: {}", first.display());

        // Running longer is a change the resume must be told about.
        let resumed = train(3, &["--resume", "--allow-change", "train.max_steps"]);
        assert!(resumed.contains("resumed from") && resumed.contains("step 2"), "{name}: {resumed}");
        assert_eq!(step_losses(&run).iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3], "{name}");
        assert!(step_losses(&run).iter().all(|(_, loss)| loss.is_finite()), "{name}");

        let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
        let sets = overrides(&recipe, &data, &runs, 3);
        let mut eval = pe();
        eval.arg("eval").arg(&recipe).arg("--checkpoint").arg(&last).args(sets);
        let evaluated = run_ok(&mut eval, &format!("{name}: pe eval"));
        assert!(evaluated.contains("on 9 images"), "{name}: {evaluated}");
    }
}
