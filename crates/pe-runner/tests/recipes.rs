//! Every shipped recipe (experiments/*.toml) trains end to end with its own settings: two
//! optimizer steps, a published checkpoint, a resume from it, evaluation, and `pe eval` reading
//! the checkpoint. A new recipe is covered without editing this test.
//!
//! Only what cannot fit this machine is overridden, the same for every recipe (see
//! `common::shipped::overrides`): the data root (a generated ImageFolder of 3 classes),
//! `model.num_classes = 3`, a 32-pixel input (`data.img_size`, and `model.img_size` for ViTs),
//! `train.batch_size = 4`, `eval.batch_size = 8`, `train.device = "cpu"`, `train.amp = "off"` (bf16
//! autocast on this CPU is slow, and is tested on its own in train.rs), `train.threads = 1`,
//! `data.workers = 1`, the runs folder, logging every step and `train.max_steps`. The same walk runs
//! on a GPU with the recipes' own autocast in tests/cuda.rs.

mod common;

use common::shipped::{recipes, train_resume_evaluate, write_data, Machine};

#[test]
fn every_shipped_recipe_trains_checkpoints_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_data(&data, Machine::Cpu);
    let runs = dir.path().join("runs");
    for recipe in recipes() {
        train_resume_evaluate(&recipe, &data, &runs, Machine::Cpu);
    }
}
