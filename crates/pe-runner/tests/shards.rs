//! `data.format = "shards"`: the same recipe trains from `pe prepare shards` output as from the
//! ImageFolder, on one process and on two, and is killed and resumed exactly; the same tars read as
//! `format = "webdataset"` (listed by URL, counted by `_info.json`) train to the same losses.

mod common;

use common::*;

#[test]
fn a_recipe_trains_from_tar_shards_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, shards) = (dir.path().join("folder"), dir.path().join("shards"));
    tiny_image_folder(&folder, 3, 20, 3, 24);
    let prepare = ["prepare", "shards", "--shard-mb", "1"];
    run_ok(pe().args(prepare).arg("--from").arg(&folder).arg("--to").arg(&shards), "pe prepare shards");

    let runs = dir.path().join("runs");
    let shard_recipe =
        |name| tiny_recipe(dir.path(), name, &shards, &runs, "accum_steps = 2", "format = \"shards\"");
    let reference = shard_recipe("reference");
    let stdout = run_ok(pe().arg("train").arg(&reference), "train from shards");
    assert!(stdout.contains("on 9 images"), "every validation image once: {stdout}");
    let expected = step_losses(&runs.join("reference"));
    assert_eq!(expected.len(), 15, "60 images / (6 × 2) = 5 steps per epoch, 3 epochs");

    let interrupted = shard_recipe("interrupted");
    let run = runs.join("interrupted");
    let mut child = pe().arg("train").arg(&interrupted).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for_steps(&mut child, &run, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout = run_ok(pe().arg("train").arg(&interrupted), "resume from shards");
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_same_losses(&step_losses(&run), &expected);

    let two = tiny_recipe(dir.path(), "two", &shards, &runs, "", "format = \"shards\"");
    let stdout = run_ok(pe().args(["launch", "--nproc", "2", "--", "train"]).arg(&two), "2 processes");
    assert!(stdout.contains("on 9 images"), "{stdout}");

    let urls = |split: &str| {
        let mut names: Vec<String> = std::fs::read_dir(shards.join(split))
            .unwrap()
            .map(|e| format!("{split}/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        names
    };
    let webdataset =
        format!("format = \"webdataset\"\ntrain_urls = {:?}\nval_urls = {:?}", urls("train"), urls("val"));
    let recipe = tiny_recipe(dir.path(), "webdataset", &shards, &runs, "accum_steps = 2", &webdataset);
    let stdout = run_ok(pe().arg("train").arg(&recipe), "train from the tars as webdataset");
    assert!(stdout.contains("on 9 images"), "{stdout}");
    assert_same_losses(&step_losses(&runs.join("webdataset")), &expected);
    let two = tiny_recipe(dir.path(), "webdataset-two", &shards, &runs, "", &webdataset);
    let stdout =
        run_ok(pe().args(["launch", "--nproc", "2", "--", "train"]).arg(&two), "webdataset, 2 processes");
    assert!(stdout.contains("on 9 images"), "{stdout}");
}
