//! One class list per run: the training split defines it, every checkpoint stores it, and `pe eval`
//! maps validation folders through it, so a split that lacks a class keeps every label in place.

mod common;

use std::path::Path;

use common::*;

fn eval_json(recipe: &Path, checkpoint: &Path, data: &Path) -> (serde_json::Value, String) {
    let out = pe()
        .arg("eval")
        .arg(recipe)
        .arg("--checkpoint")
        .arg(checkpoint)
        .args(["--set", &format!("data.root={data:?}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (serde_json::from_str(stdout.lines().last().unwrap()).unwrap(), stderr)
}

#[test]
fn a_validation_split_missing_a_class_keeps_its_labels_and_an_unknown_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trained_on = dir.path().join("data");
    tiny_image_folder(&trained_on, 3, 12, 3, 16);
    let runs = dir.path().join("runs");
    let recipe = tiny_recipe(dir.path(), "classes", &trained_on, &runs, "", "");
    let out = pe().arg("train").arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = std::fs::canonicalize(runs.join("classes/checkpoints/last")).unwrap();

    // The same images twice: once with val/class_0 emptied (its folder still numbers the classes
    // as in training), once with the folder gone.
    let (emptied, removed) = (dir.path().join("emptied"), dir.path().join("removed"));
    for root in [&emptied, &removed] {
        tiny_image_folder(root, 3, 12, 3, 16);
    }
    for entry in std::fs::read_dir(emptied.join("val/class_0")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::remove_dir_all(removed.join("val/class_0")).unwrap();
    let (reference, _) = eval_json(&recipe, &checkpoint, &emptied);
    let (result, stderr) = eval_json(&recipe, &checkpoint, &removed);
    assert_eq!(result["samples"], 6);
    assert_eq!(result, reference, "labels must not shift when a class folder is missing");
    assert!(stderr.contains("no images of 1 class(es): class_0"), "{stderr}");

    let extra = dir.path().join("extra");
    tiny_image_folder(&extra, 4, 1, 1, 16);
    let out = pe()
        .arg("eval")
        .arg(&recipe)
        .arg("--checkpoint")
        .arg(&checkpoint)
        .args(["--set", &format!("data.root={extra:?}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("class_3"), "{stderr}");
}
