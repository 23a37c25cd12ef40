//! End-to-end training on a tiny generated ImageFolder: the run folder, evaluation, and exact
//! resume after the process is killed.

mod common;

use std::path::Path;

use common::*;

/// Starts `pe train recipe` and returns once `run` has logged `steps` steps (the run still going).
fn start_and_wait_for_steps(recipe: &Path, run: &Path, steps: usize) -> std::process::Child {
    let mut child = pe().arg("train").arg(recipe).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for_steps(&mut child, run, steps);
    child
}

#[test]
fn a_short_run_trains_evaluates_and_writes_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 12, 4, 20);
    let runs = dir.path().join("runs");
    let recipe = tiny_recipe(dir.path(), "tiny", &data, &runs, "ema_decay = 0.9", "");
    let out = pe().arg("train").arg(&recipe).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("final top-1") && stdout.contains("EMA"), "{stdout}");
    let run = runs.join("tiny");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("pe_stages = [2]"), "{resolved}");
    // 36 images / batch 6 = 6 steps per epoch, 3 epochs.
    let losses = step_losses(&run);
    assert_eq!(losses.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=18).collect::<Vec<_>>());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"type\":\"eval\"")).count(), 3);
    assert_eq!(metrics.lines().filter(|l| l.contains("\"type\":\"eval_ema\"")).count(), 3);
    for link in ["last", "best"] {
        let target = std::fs::canonicalize(run.join("checkpoints").join(link)).unwrap();
        for file in ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"] {
            assert!(target.join(file).exists(), "{link}/{file}");
        }
    }
    let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    assert!(last.ends_with("step-000000018"), "{}", last.display());
    // `pe eval` on the best checkpoint reproduces an accuracy.
    let out =
        pe().arg("eval").arg(&recipe).arg("--checkpoint").arg(run.join("checkpoints/best")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("top-1"));
}

/// Trains a reference run, then the same recipe SIGKILLed after a few steps and started again;
/// the resumed run's per-step losses must equal the uninterrupted ones.
fn killed_run_resumes_exactly(train: &str, mixing: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 20, 2, 24);
    let runs = dir.path().join("runs");
    let reference = tiny_recipe(dir.path(), "reference", &data, &runs, train, mixing);
    let interrupted = tiny_recipe(dir.path(), "interrupted", &data, &runs, train, mixing);
    let out = pe().arg("train").arg(&reference).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = step_losses(&runs.join("reference"));
    assert_eq!(expected.len(), 15, "60 images / (6 × 2) = 5 steps per epoch, 3 epochs");

    // Start, wait until a few steps are logged, SIGKILL, then run the same command again.
    let run = runs.join("interrupted");
    let mut child = start_and_wait_for_steps(&interrupted, &run, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = step_losses(&run).len();
    assert!(killed_at < 15, "killed mid-run");
    let out = pe().arg("train").arg(&interrupted).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_same_losses(&step_losses(&run), &expected);
}

#[test]
fn a_killed_run_resumes_with_exactly_the_same_step_losses() {
    // Mixup/CutMix, random crops and accumulation, so every RNG stream matters.
    killed_run_resumes_exactly("accum_steps = 2", "mixup_alpha = 0.8\ncutmix_alpha = 1.0");
}

#[test]
fn a_killed_channels_last_run_resumes_with_exactly_the_same_step_losses() {
    // channels_last weights and optimizer state must survive the checkpoint in their layout.
    killed_run_resumes_exactly("accum_steps = 2\nchannels_last = true", "");
}

#[test]
fn a_missing_dataset_stops_at_once_naming_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let recipe =
        tiny_recipe(dir.path(), "nodata", &dir.path().join("imagenet"), &dir.path().join("runs"), "", "");
    let out = pe().arg("train").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("imagenet") && stderr.contains("data/README.md"), "{stderr}");
}

#[test]
fn bf16_and_fp16_autocast_train_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 12, 4, 20);
    let runs = dir.path().join("runs");
    for amp in ["bf16", "fp16"] {
        let recipe = tiny_recipe(dir.path(), amp, &data, &runs, &format!("amp = \"{amp}\""), "");
        let out = pe().arg("train").arg(&recipe).output().unwrap();
        assert!(out.status.success(), "{amp}: {}", String::from_utf8_lossy(&out.stderr));
        let losses = step_losses(&runs.join(amp));
        assert_eq!(losses.len(), 18, "{amp}");
        assert!(losses.iter().all(|(_, l)| l.is_finite()), "{amp}: {losses:?}");
        let metrics = std::fs::read_to_string(runs.join(amp).join("metrics.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        // Only fp16 runs a loss scaler; it starts at PyTorch's 2^16.
        match amp {
            "fp16" => assert_eq!(first["loss_scale"].as_f64(), Some(65536.0), "{first}"),
            _ => assert!(first["loss_scale"].is_null(), "{first}"),
        }
    }
}

#[test]
fn a_diverging_run_stops_at_the_next_check_naming_the_steps_and_saves_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 12, 4, 20);
    let runs = dir.path().join("runs");
    let recipe = tiny_recipe(dir.path(), "diverges", &data, &runs, "", "");
    // AdamW moves every weight by about lr per step: at 1e30 the logits overflow within steps.
    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", "optimizer.lr=1e30", "--set", "schedule.warmup_epochs=0"])
        .args(["--set", "train.checkpoint_every_steps=2", "--set", "logging.every_steps=4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the loss became NaN or infinite"), "{stderr}");
    // The first check after step 0 is the checkpoint at step 2.
    assert!(stderr.contains("between step 0 and step 2"), "{stderr}");
    assert!(!runs.join("diverges/checkpoints/last").exists(), "no checkpoint holds diverged weights");
}
