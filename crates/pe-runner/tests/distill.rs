//! Training with a teacher (`[distill]`) end to end on a tiny generated ImageFolder: the teacher
//! changes the loss and nothing else, stays out of checkpoints and the optimizer, is part of the
//! run identity, trains a distilled ViT's second head, and bad teachers are refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `[distill]` lines for `teacher` (a run folder or weights file), after the recipe's `[train]`.
fn distill(teacher: &Path, lines: &str) -> String {
    format!("accum_steps = 2\n\n[distill]\nteacher = {teacher:?}\n{lines}\n")
}

fn tensor_names(file: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        tch::Tensor::read_safetensors(file).unwrap().into_iter().map(|(name, _)| name).collect();
    names.sort();
    names
}

fn last_checkpoint(run: &Path) -> PathBuf {
    std::fs::canonicalize(run.join("checkpoints/last")).unwrap()
}

/// 3 classes of 16×16 images; returns (data, runs).
fn folders(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    tiny_image_folder(&data, 3, 12, 4, 20);
    (data, dir.join("runs"))
}

#[test]
fn a_teacher_changes_the_loss_only_and_stays_out_of_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (data, runs) = folders(dir.path());
    let plain = tiny_recipe(dir.path(), "plain", &data, &runs, "accum_steps = 2", "");
    run_ok(pe().arg("train").arg(&plain), "the teacher's run");
    let teacher = runs.join("plain");

    // alpha = 0: the teacher runs every micro-batch but weighs nothing, so every step's loss is
    // the plain run's to the bit (its construction draws nothing the student draws).
    let weightless = tiny_recipe(
        dir.path(),
        "weightless",
        &data,
        &runs,
        &distill(&teacher, "kind = \"soft\"\nalpha = 0.0\ntau = 2.0"),
        "",
    );
    let stdout = run_ok(pe().arg("train").arg(&weightless), "a run with a weightless teacher");
    assert!(stdout.contains("distill: teacher"), "{stdout}");
    assert_same_losses(&step_losses(&runs.join("weightless")), &step_losses(&teacher));

    let student = tiny_recipe(
        dir.path(),
        "student",
        &data,
        &runs,
        &distill(&teacher, "kind = \"hard\"\nalpha = 0.5"),
        "",
    );
    run_ok(pe().arg("train").arg(&student), "a run with a teacher");
    let (with, without) = (step_losses(&runs.join("student")), step_losses(&teacher));
    assert_eq!(with.len(), without.len());
    assert!(with[0].1 != without[0].1, "the teacher did not change the first loss: {with:?}");
    // The checkpoints hold the student alone: the same tensors as the teacher's own run.
    let (ours, theirs) = (last_checkpoint(&runs.join("student")), last_checkpoint(&teacher));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert_eq!(tensor_names(&ours.join(file)), tensor_names(&theirs.join(file)), "{file}");
    }
    let identity = std::fs::read_to_string(ours.join("identity.json")).unwrap();
    assert!(identity.contains("\"teacher\"") && identity.contains("blake3:"), "{identity}");

    // Other teacher weights under the same run: refused, naming the teacher's digest.
    let other = tiny_recipe(dir.path(), "other", &data, &runs, "accum_steps = 2", "");
    run_ok(pe().arg("train").arg(&other).args(["--set", "train.seed=8"]), "another teacher");
    let out = pe()
        .arg("train")
        .arg(&student)
        .arg("--set")
        .arg(format!("distill.teacher={:?}", runs.join("other").display().to_string()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "resumed with another teacher");
    assert!(stderr.contains("teacher.digest"), "{stderr}");
}

#[test]
fn a_distilled_vit_trains_both_heads_with_a_resnet_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (data, runs) = folders(dir.path());
    let teacher = tiny_recipe(dir.path(), "teacher", &data, &runs, "", "");
    run_ok(pe().arg("train").arg(&teacher), "the teacher");
    let recipe =
        tiny_recipe(dir.path(), "vit", &data, &runs, &distill(&runs.join("teacher"), "kind = \"hard\""), "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let model = "[model]\narch = \"vit\"\nimg_size = 16\npatch_size = 4\nin_channels = 3\nnum_classes = 3\n\
                 embed_dim = 24\ndepth = 2\nheads = 2\nmlp_ratio = 2.0\ndistilled = true\n\n[data]";
    let start = text.find("[model]").unwrap();
    let end = text.find("[data]").unwrap();
    std::fs::write(&recipe, format!("{}{model}{}", &text[..start], &text[end + "[data]".len()..])).unwrap();
    let stdout = run_ok(pe().arg("train").arg(&recipe), "a distilled ViT");
    assert!(stdout.contains("final top-1"), "{stdout}");
    let run = runs.join("vit");
    let names = tensor_names(&last_checkpoint(&run).join("model.safetensors"));
    for name in ["dist_token", "head_dist.weight", "head_dist.bias", "head.weight"] {
        assert!(names.contains(&name.to_owned()), "{name} missing from {names:?}");
    }
    // Evaluation averages the two heads (and runs).
    let out = pe().arg("eval").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_teachers_and_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (data, runs) = folders(dir.path());
    let refused = |train_extra: &str, sets: &[&str], wanted: &[&str]| {
        let recipe = tiny_recipe(dir.path(), "refused", &data, &runs, train_extra, "");
        let mut command = pe();
        command.arg("train").arg(&recipe);
        for set in sets {
            command.arg("--set").arg(set);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{train_extra} {sets:?}: {stderr}");
        for text in wanted {
            assert!(stderr.contains(text), "{train_extra} {sets:?}: {text:?} not in {stderr}");
        }
        assert!(!runs.join("refused").exists(), "a refused start left a run folder");
    };
    let missing = dir.path().join("no_such_run");
    refused(&distill(&missing, "kind = \"hard\""), &[], &["distill.teacher", "no_such_run"]);
    refused(&distill(&missing, "kind = \"hard\"\ntau = 2.0"), &[], &["distill.tau", "soft"]);
    refused(&distill(&missing, "kind = \"soft\"\nalpha = 1.5"), &[], &["distill.alpha"]);
    refused(
        &distill(&missing, "kind = \"soft\""),
        &["train.device=\"auto\"", "train.accum_steps=1", "train.cuda_graph=true"],
        &["train.cuda_graph", "[distill]"],
    );
    // A teacher for ten classes cannot teach three.
    let weights = dir.path().join("resnet_mini.safetensors");
    run_ok(pe().args(["forward", "--model", "resnet_mini", "--save-weights"]).arg(&weights), "weights");
    refused(
        &distill(&weights, "kind = \"hard\"\nteacher_model = \"resnet_mini\""),
        &[],
        &["the teacher has 10 classes, the student 3"],
    );
    refused(&distill(&weights, "kind = \"hard\""), &[], &["distill.teacher_model"]);
}
