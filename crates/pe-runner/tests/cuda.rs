//! Training on a CUDA GPU: every shipped recipe with its own autocast (bf16) and memory format
//! (channels_last for the ResNets), fp16 with the gradient scaler, and a resume from a checkpoint.
//! CI has no GPU; run on a GPU machine with `cargo test --release -p pe-runner --test cuda -- --ignored`.

mod common;

use common::shipped::{recipes, train_resume_evaluate, write_data, Machine};
use common::*;

fn on_cuda() -> [&'static str; 2] {
    assert!(tch::Cuda::is_available(), "this test needs a CUDA device (libtorch sees none)");
    ["--set", "train.device=\"cuda\""]
}

#[test]
#[ignore = "needs CUDA"]
fn every_shipped_recipe_trains_resumes_and_evaluates_on_cuda() {
    on_cuda();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_data(&data, Machine::Cuda);
    let runs = dir.path().join("runs");
    // Six recipes at a time: a GPU machine has the cores, and each process spends most of its few
    // seconds starting CUDA. A failing recipe's panic is printed and fails the test after all ran.
    let recipes = recipes();
    std::thread::scope(|scope| {
        for chunk in recipes.chunks(recipes.len().div_ceil(6)) {
            let (data, runs) = (&data, &runs);
            scope.spawn(move || {
                for recipe in chunk {
                    train_resume_evaluate(recipe, data, runs, Machine::Cuda);
                }
            });
        }
    });
}

/// fp16 autocast with the dynamic loss scale: starts at 2^16, and the loss falls on data a small
/// model can learn.
#[test]
#[ignore = "needs CUDA"]
fn fp16_with_the_gradient_scaler_learns_on_cuda() {
    let device = on_cuda();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 8, 3, 24);
    let runs = dir.path().join("runs");
    let recipe = tiny_recipe(dir.path(), "fp16", &data, &runs, "amp = \"fp16\"", "");
    run_ok(pe().arg("train").arg(&recipe).args(device), "fp16 on cuda");
    let losses: Vec<f64> = step_losses(&runs.join("fp16")).into_iter().map(|(_, l)| l).collect();
    assert_eq!(losses.len(), 12, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let metrics = std::fs::read_to_string(runs.join("fp16/metrics.jsonl")).unwrap();
    let first: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|r: &serde_json::Value| r["type"] == "train")
        .unwrap();
    assert_eq!(first["loss_scale"].as_f64(), Some(65536.0), "{first}");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(mean(&losses[9..]) < mean(&losses[..3]), "the loss did not fall: {losses:?}");
}

/// A run stopped at a checkpoint and resumed continues as the uninterrupted run does. On a GPU
/// cuDNN's autotuned kernels are not bit-reproducible, so this compares to a tolerance, where the
/// CPU test (train.rs) asks for equality.
#[test]
#[ignore = "needs CUDA"]
fn a_resumed_cuda_run_continues_like_the_uninterrupted_one() {
    let device = on_cuda();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 8, 3, 24);
    let runs = dir.path().join("runs");
    let extra = "amp = \"bf16\"\nchannels_last = true";
    let whole = tiny_recipe(dir.path(), "whole", &data, &runs, extra, "");
    run_ok(pe().arg("train").arg(&whole).args(device), "uninterrupted");
    let parts = tiny_recipe(dir.path(), "parts", &data, &runs, extra, "");
    run_ok(pe().arg("train").arg(&parts).args(device).args(["--set", "train.max_steps=5"]), "first part");
    let resume = ["--resume", "--allow-change", "train.max_steps"];
    run_ok(pe().arg("train").arg(&parts).args(device).args(resume), "resumed");
    let (whole, parts) = (step_losses(&runs.join("whole")), step_losses(&runs.join("parts")));
    assert_eq!(whole.len(), parts.len(), "{whole:?} vs {parts:?}");
    for ((step, a), (_, b)) in whole.iter().zip(&parts) {
        assert!((a - b).abs() <= 2e-2 * a.abs().max(1.0), "step {step}: uninterrupted {a} vs resumed {b}");
    }
}
