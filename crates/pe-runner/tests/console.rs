//! What a person reads: lines off a terminal, a closed pipe, one config error per launch, epoch
//! numbers, and where the logs are served from.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::*;

#[test]
fn off_a_terminal_each_logged_step_is_a_line_and_an_early_eval_says_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 12, 4, 20);
    let runs = dir.path().join("elsewhere");
    let recipe = tiny_recipe(dir.path(), "lines", &data, &runs, "max_steps = 4", "");
    // progress = true, but stderr is not a terminal here: no bar, so plain lines.
    let text = std::fs::read_to_string(&recipe).unwrap().replace("progress = false", "progress = true");
    std::fs::write(&recipe, text).unwrap();
    let stdout = run_ok(pe().arg("train").arg(&recipe), "pe train");
    for step in 1..=4 {
        assert!(stdout.contains(&format!("epoch 1 step {step}: loss ")), "{stdout}");
    }
    assert!(stdout.contains("img/s"), "{stdout}");
    // max_steps stopped the run at step 4 of an epoch of 6.
    assert!(stdout.contains("step 4 (inside epoch 1, train.max_steps reached) eval: top-1"), "{stdout}");
    assert!(stdout.contains("best top-1") && stdout.contains("after epoch 1"), "{stdout}");
    // runs_dir is not runs/, which `make tensorboard` serves.
    assert!(stdout.contains(&format!("tensorboard --logdir {}", runs.display())), "{stdout}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("lines/checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["best_after_epoch"], 1, "1-based, as the logs print it: {state}");
}

#[test]
fn a_table_piped_into_head_ends_quietly() {
    let mut child = pe()
        .args(["summary", "--layers"]) // 115 kB: more than a pipe buffers
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is gone (as `head -1` exits): the rest of the table meets a closed pipe.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let quiet = output.status.success() || output.status.signal() == Some(13);
    assert!(quiet, "exit 0 or SIGPIPE (141), got {:?}", output.status);
}

#[test]
fn a_bad_recipe_under_pe_launch_exits_2_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let recipe =
        tiny_recipe(dir.path(), "bad", &dir.path().join("data"), &dir.path().join("runs"), "lr = 1", "");
    let output = pe().args(["launch", "--nproc", "2", "--", "train"]).arg(&recipe).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("unknown field `lr`").count(), 1, "{stderr}");
}
