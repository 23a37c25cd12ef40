//! A run folder holds one experiment: a different one is refused (naming what changed), allowed
//! changes are recorded, `--name` starts a new folder, and only one process trains a folder.

mod common;

use std::path::Path;

use common::*;

/// `tiny_recipe` with `epochs` epochs.
fn recipe_with_epochs(dir: &Path, name: &str, data: &Path, runs: &Path, epochs: u32) -> std::path::PathBuf {
    let recipe = tiny_recipe(dir, name, data, runs, "", "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("epochs = 3", &format!("epochs = {epochs}"));
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn last_checkpoint(run: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(run.join("checkpoints/last")).unwrap()
}

/// The TensorBoard event files in a run folder.
fn event_files(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("events.out.tfevents"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_same_recipe_on_other_data_is_refused_with_the_changed_keys_and_nothing_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (data, other) = (dir.path().join("data"), dir.path().join("other"));
    tiny_image_folder(&data, 3, 6, 2, 16);
    tiny_image_folder(&other, 3, 8, 2, 16);
    let runs = dir.path().join("runs");
    let recipe = recipe_with_epochs(dir.path(), "first", &data, &runs, 2);
    let out = pe().arg("train").arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.join("first");
    let (checkpoint, config, metrics, events) = (
        last_checkpoint(&run),
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        event_files(&run),
    );
    assert_eq!(events.len(), 1, "{events:?}");

    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", &format!("data.root={other:?}"), "--set", "train.epochs=3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The data differs (its location alone would not be a change).
    for expected in ["dataset.train_samples: 18 -> 24", "train.epochs: 2 -> 3", "--name"] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("--allow-change data.root"), "the data is not resumable: {stderr}");
    assert_eq!(last_checkpoint(&run), checkpoint);
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(event_files(&run), events, "a refused run must not write an event file");

    // The two ways forward both work: a new run folder, or an allowed change on resume.
    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", &format!("data.root={other:?}"), "--name", "second"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("resumed"));
    assert_eq!(step_losses(&runs.join("second")).len(), 8, "2 epochs of 24 images / batch 6");

    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", "train.epochs=3", "--resume", "--allow-change", "train.epochs"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from"));
    assert_eq!(step_losses(&run).len(), 9, "a third epoch of 3 steps after the first two");
    let changes = std::fs::read_to_string(run.join("resume_changes.jsonl")).unwrap();
    assert!(
        changes.contains("\"key\":\"train.epochs\"") && changes.contains("\"resumed_at_step\":6"),
        "{changes}"
    );
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), config, "the first config stays");
}

#[test]
fn an_allow_change_key_that_no_resume_may_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "x", &dir.path().join("data"), &dir.path().join("runs"), "", "");
    let out =
        pe().arg("train").arg(&recipe).args(["--resume", "--allow-change", "optimizer.lr"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-change optimizer.lr"));
}

#[test]
fn a_second_process_on_the_same_run_folder_exits_2_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 40, 2, 16);
    let runs = dir.path().join("runs");
    let recipe = recipe_with_epochs(dir.path(), "busy", &data, &runs, 50);
    let mut first = pe().arg("train").arg(&recipe).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for_steps(&mut first, &runs.join("busy"), 1);
    let second = pe().arg("train").arg(&recipe).output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");
    // The lock died with the first process: the same command now resumes.
    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", "train.max_steps=30", "--resume", "--allow-change", "train.max_steps"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from"));
}

#[test]
fn a_checkpoint_without_an_identity_is_continued_only_with_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 6, 2, 16);
    let runs = dir.path().join("runs");
    let recipe = recipe_with_epochs(dir.path(), "old", &data, &runs, 2);
    let out = pe().arg("train").arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // As a pe from before run identities left it: no identity.json anywhere (and so no content
    // hashes in state.json, which came later still).
    let run = runs.join("old");
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("identity.json").exists() {
            std::fs::remove_file(dir.join("identity.json")).unwrap();
            let state = dir.join("state.json");
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
            json.as_object_mut().unwrap().remove("files");
            std::fs::write(&state, json.to_string()).unwrap();
        }
    }
    let more = ["--set", "train.epochs=3"];
    let out = pe().arg("train").arg(&recipe).args(more).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no identity.json") && stderr.contains("--resume"), "{stderr}");
    assert_eq!(event_files(&run).len(), 1, "a refused run must not write an event file");

    let out = pe().arg("train").arg(&recipe).args(more).arg("--resume").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from"));
    assert_eq!(step_losses(&run).len(), 9, "a third epoch of 3 steps after the first two");
}

#[test]
fn rerunning_a_run_that_reached_max_steps_trains_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 6, 2, 16);
    let runs = dir.path().join("runs");
    let recipe = recipe_with_epochs(dir.path(), "capped", &data, &runs, 5);
    let capped = ["--set", "train.max_steps=2"];
    let out = pe().arg("train").arg(&recipe).args(capped).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.join("capped");
    let (checkpoint, metrics) =
        (last_checkpoint(&run), std::fs::read_to_string(run.join("metrics.jsonl")).unwrap());
    let evals = |text: &str| text.lines().filter(|l| l.contains("\"type\":\"eval\"")).count();

    let out = pe().arg("train").arg(&recipe).args(capped).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(last_checkpoint(&run), checkpoint, "no step past train.max_steps");
    assert_eq!(step_losses(&run).len(), 2);
    let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(evals(&after), evals(&metrics), "no second evaluation of the same weights");
}

#[test]
fn data_that_moved_or_became_shards_resumes_and_other_data_of_the_same_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 6, 2, 16);
    let runs = dir.path().join("runs");
    let recipe = recipe_with_epochs(dir.path(), "moving", &data, &runs, 2);
    run_ok(pe().arg("train").arg(&recipe), "two epochs");
    let set = |key: &str, value: &Path| format!("{key}={:?}", value.display().to_string());

    // Moved: where the data lives is not what it is, so the run continues there as it is.
    let moved = dir.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let stdout = run_ok(pe().arg("train").arg(&recipe).args(["--set", &set("data.root", &moved)]), "moved");
    assert!(stdout.contains("resumed from"), "{stdout}");
    let longer = |epochs: u32| format!("train.epochs={epochs}");
    let stdout = run_ok(
        pe().arg("train")
            .arg(&recipe)
            .args(["--set", &set("data.root", &moved), "--set", &longer(3)])
            .args(["--resume", "--allow-change", "train.epochs"]),
        "a longer run on the moved data",
    );
    assert!(stdout.contains("resumed from"), "{stdout}");

    // Its shards: the same data in another format.
    let shards = dir.path().join("shards");
    run_ok(
        pe().args(["prepare", "shards", "--shard-mb", "1", "--from"]).arg(&moved).arg("--to").arg(&shards),
        "shards",
    );
    let stdout = run_ok(
        pe().arg("train")
            .arg(&recipe)
            .args([
                "--set",
                &set("data.root", &shards),
                "--set",
                "data.format=\"shards\"",
                "--set",
                &longer(4),
            ])
            .args(["--resume", "--allow-change", "data.format", "train.epochs"]),
        "resume on the shards",
    );
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_eq!(step_losses(&runs.join("moving")).len(), 12, "four epochs of 3 steps");

    // Other data with the same classes and counts: one file named differently.
    let other = dir.path().join("other");
    tiny_image_folder(&other, 3, 6, 2, 16);
    std::fs::rename(other.join("train/class_0/000.jpg"), other.join("train/class_0/renamed.jpg")).unwrap();
    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", &set("data.root", &other), "--set", &longer(5)])
        .args(["--resume", "--allow-change", "train.epochs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("dataset.train_fingerprint"), "{stderr}");
}
