//! A tiny generated ImageFolder and recipe, so end-to-end runs take seconds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod shipped;

/// Writes `root/{train,val}/class_k/*.jpg`: each class a distinct colour with noise, so a small
/// model can learn it within a few steps.
pub fn tiny_image_folder(
    root: &Path,
    classes: usize,
    train_per_class: usize,
    val_per_class: usize,
    side: u32,
) {
    let mut state = 12345u64;
    let mut noise = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 58) as u8
    };
    for (split, count) in [("train", train_per_class), ("val", val_per_class)] {
        for class in 0..classes {
            let dir = root.join(split).join(format!("class_{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let base =
                    [(class * 90 % 256) as u8, (255 - class * 70 % 256) as u8, (class * 40 % 256) as u8];
                let image = image::RgbImage::from_fn(side, side, |x, y| {
                    let stripe = if (x + y * class as u32) % 7 < 3 { 40 } else { 0 };
                    image::Rgb(base.map(|c| c.saturating_add(noise()).saturating_sub(stripe)))
                });
                image.save(dir.join(format!("{i:03}.jpg"))).unwrap();
            }
        }
    }
}

/// A recipe for a 2-stage PE ResNet on `data_root`, writing runs under `runs_dir`.
/// `train_extra` / `data_extra` are lines added to those sections.
pub fn tiny_recipe(
    dir: &Path,
    name: &str,
    data_root: &Path,
    runs_dir: &Path,
    train_extra: &str,
    data_extra: &str,
) -> PathBuf {
    let text = format!(
        r#"name = "{name}"

[model]
arch = "resnet"
block = "bottleneck"
layers = [1, 2]
widths = [4, 8]
stem = "small"
stem_channels = 8
in_channels = 3
num_classes = 3
pe_stages = [2]

[data]
root = {data_root:?}
img_size = 16
scale = [0.5, 1.0]
color_jitter = 0.0
label_smoothing = 0.1
workers = 2
{data_extra}
[optimizer]
name = "adamw"
lr = 2e-3
base_batch = 0
weight_decay = 0.05

[schedule]
name = "cosine"
warmup_epochs = 1
min_lr = 1e-5

[train]
epochs = 3
batch_size = 6
device = "cpu"
seed = 7
threads = 1
checkpoint_every_steps = 1
{train_extra}
[logging]
runs_dir = {runs_dir:?}
every_steps = 1
sample_images = 2
progress = false
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn pe() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_pe"))
}

/// `(step, loss)` of every train record in a run's metrics.jsonl, the last one per step. Reads only
/// whole lines: the run may be writing the file while a test polls it.
pub fn step_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
    let mut by_step = std::collections::BTreeMap::new();
    for line in whole.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        if record["type"] == "train" {
            by_step.insert(record["step"].as_u64().unwrap(), record["loss"].as_f64().unwrap());
        }
    }
    by_step.into_iter().collect()
}

/// Runs `command` and returns its stdout; fails the test with both streams when it exits non-zero.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> String {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {:?}\n{stdout}\n{stderr}", out.status);
    stdout
}

/// Returns once `run` has logged `steps` steps, failing if `child` ends first or makes no progress.
pub fn wait_for_steps(child: &mut std::process::Child, run: &Path, steps: usize) {
    let started = std::time::Instant::now();
    while step_losses(run).len() < steps {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be stopped");
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "no progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A resumed run's per-step losses equal the uninterrupted run's, step for step, to 1e-6.
pub fn assert_same_losses(resumed: &[(u64, f64)], uninterrupted: &[(u64, f64)]) {
    assert_eq!(resumed.len(), uninterrupted.len());
    for ((step, a), (_, b)) in resumed.iter().zip(uninterrupted) {
        assert!((a - b).abs() <= 1e-6, "step {step}: resumed {a} vs uninterrupted {b}");
    }
}
