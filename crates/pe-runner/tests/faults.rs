//! Faults that used to lose work, each tried as a user meets it, in a real `pe` process on real
//! files: stop signals, a quick second Ctrl-C, a broken `last`, damaged checkpoint bytes, an
//! unreadable validation image, a kill between checkpoints, a start that failed before its first
//! checkpoint.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

/// A tiny run of 3 epochs × 6 steps, a checkpoint every `every` steps.
fn setup(dir: &Path, name: &str, every: u32) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    if !data.exists() {
        tiny_image_folder(&data, 3, 12, 4, 20);
    }
    let runs = dir.join("runs");
    let recipe = tiny_recipe(dir, name, &data, &runs, "", "");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("checkpoint_every_steps = 1", &format!("checkpoint_every_steps = {every}"));
    std::fs::write(&recipe, text).unwrap();
    (recipe, runs.join(name))
}

fn train(recipe: &Path) -> Command {
    let mut command = pe();
    command.arg("train").arg(recipe);
    command
}

fn start(recipe: &Path) -> Child {
    train(recipe).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill {name}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{:?}\n{}\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The `type` records of metrics.jsonl, as (type, step) in file order.
fn records(run: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (record["type"].as_str().unwrap().to_owned(), record["step"].as_u64().unwrap())
        })
        .collect()
}

fn train_steps(run: &Path) -> Vec<u64> {
    records(run).into_iter().filter(|(kind, _)| kind == "train").map(|(_, step)| step).collect()
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

#[test]
fn every_stop_signal_saves_after_the_step_and_exits_128_plus_its_number() {
    let dir = tempfile::tempdir().unwrap();
    for (name, code) in [("-INT", 130), ("-TERM", 143), ("-USR1", 138)] {
        // No periodic checkpoints: the one the signal asks for is the first.
        let run_name = format!("stop{code}");
        let (recipe, run) = setup(dir.path(), &run_name, 0);
        let mut child = start(&recipe);
        wait_for_steps(&mut child, &run, 2);
        signal(&child, name);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(code), "kill {name}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains(&format!("exiting {code}")), "{}", text(&output.stderr));
        let saved = std::fs::canonicalize(run.join("checkpoints/last")).expect("a checkpoint was saved");
        let step = state(&saved)["step"].as_u64().unwrap();
        assert!(step >= 2 && step == train_steps(&run).len() as u64, "saved at the last finished step");
        assert!(ok(train(&recipe).output().unwrap()).contains("resumed from"));
    }
}

#[test]
fn two_quick_ctrl_cs_abort_at_once_and_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = setup(dir.path(), "twice", 0);
    let recipe_text = std::fs::read_to_string(&recipe).unwrap().replace("epochs = 3", "epochs = 50");
    std::fs::write(&recipe, recipe_text).unwrap();
    for attempt in 0..8 {
        let _ = std::fs::remove_dir_all(&run);
        let mut child = start(&recipe);
        wait_for_steps(&mut child, &run, 1);
        // Back to back, or 50 ms apart: the second lands while libtorch is mid-step.
        signal(&child, "-INT");
        if attempt % 2 == 1 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        signal(&child, "-INT");
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            (output.status.code(), output.status.signal()),
            (Some(130), None),
            "attempt {attempt}: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn a_missing_dangling_or_copied_last_continues_from_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = setup(dir.path(), "links", 1);
    ok(train(&recipe).output().unwrap());
    let expected = step_losses(&run);
    let checkpoints = run.join("checkpoints");
    let longer = ["--set", "train.epochs=4", "--resume", "--allow-change", "train.epochs"];
    for (case, mut breaks) in [
        ("missing", Box::new(|last: &Path| std::fs::remove_file(last).unwrap()) as Box<dyn FnMut(&Path)>),
        (
            "dangling",
            Box::new(|last: &Path| {
                std::fs::remove_file(last).unwrap();
                std::os::unix::fs::symlink("step-000000999", last).unwrap();
            }),
        ),
    ] {
        breaks(&checkpoints.join("last"));
        // The same command: it resumes from step 18 and trains nothing more over the run.
        let stdout = ok(train(&recipe).output().unwrap());
        assert!(stdout.contains("resumed from") && stdout.contains("step 18"), "{case}: {stdout}");
        assert_eq!(step_losses(&run), expected, "{case}: the run was not trained again");
        assert_eq!(train_steps(&run), (1..=18).collect::<Vec<_>>(), "{case}: one history");
        // The link is whole again.
        assert!(std::fs::read_link(checkpoints.join("last")).unwrap().ends_with("step-000000018"), "{case}");
    }
    // `--resume` finds it too, and a `last` that is a copy of its folder is replaced by a link.
    let last = checkpoints.join("last");
    let target = std::fs::canonicalize(&last).unwrap();
    std::fs::remove_file(&last).unwrap();
    copy_dir(&target, &last);
    let stdout = ok(train(&recipe).args(longer).output().unwrap());
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_eq!(train_steps(&run), (1..=24).collect::<Vec<_>>());
    assert!(std::fs::symlink_metadata(&last).unwrap().file_type().is_symlink());
    let names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temporaries left: {names:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn damaged_checkpoint_bytes_are_refused_naming_the_file_and_an_older_checkpoint_resumes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (reference, reference_run) = setup(dir.path(), "reference", 1);
    ok(train(&reference).output().unwrap());
    let expected = step_losses(&reference_run);

    let (recipe, run) = setup(dir.path(), "damaged", 1);
    let mut child = start(&recipe);
    wait_for_steps(&mut child, &run, 9);
    child.kill().unwrap();
    child.wait().unwrap();
    let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    let best = std::fs::canonicalize(run.join("checkpoints/best")).unwrap();
    assert_ne!(last, best, "best is epoch 1's checkpoint, last a later step");
    // Overwrite bytes inside the weights (the header stays readable).
    let model = last.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let at = bytes.len() - 64;
    bytes[at..at + 16].fill(0x7f);
    std::fs::write(&model, bytes).unwrap();

    let output = train(&recipe).output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&model.display().to_string()) && stderr.contains("content hash"), "{stderr}");
    // The newest older checkpoint is suggested: `best` (epoch 1), or the step before `last` when the
    // kill came between publishing `last` and pruning that one.
    let suggested: u64 = stderr
        .split_once("--resume-from step-")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no --resume-from suggestion: {stderr}"));
    let (best_step, last_step) =
        (state(&best)["step"].as_u64().unwrap(), state(&last)["step"].as_u64().unwrap());
    assert!(suggested >= best_step && suggested < last_step, "{stderr}");

    // `pe eval` refuses the damaged weights too.
    let output = pe().arg("eval").arg(&recipe).arg("--checkpoint").arg(&last).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));

    // With consent, from the older checkpoint: the rest of the run is exactly the reference's.
    let stdout = ok(train(&recipe).args(["--resume-from", &format!("step-{suggested}")]).output().unwrap());
    assert!(stdout.contains(&format!("step {suggested}")), "{stdout}");
    assert_same_losses(&step_losses(&run), &expected);
    assert_eq!(train_steps(&run), (1..=18).collect::<Vec<_>>(), "one history");
}

#[test]
fn an_unreadable_validation_image_is_left_out_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = setup(dir.path(), "badval", 0);
    // 12 good validation images and one of zero bytes.
    std::fs::write(dir.path().join("data/val/class_0/zero.jpg"), b"").unwrap();
    let output = train(&recipe).output().unwrap();
    let stderr = text(&output.stderr);
    let stdout = ok(output);
    assert!(stdout.contains("on 12 images (1 unreadable)"), "{stdout}");
    assert!(stderr.contains("zero.jpg") && stderr.contains("after epoch 1"), "{stderr}");
    assert!(records(&run).iter().any(|(kind, step)| kind == "eval_bad_files" && *step == 6));
    let last = run.join("checkpoints/last");
    let stdout = ok(pe().arg("eval").arg(&recipe).arg("--checkpoint").arg(last).output().unwrap());
    assert!(stdout.contains("on 12 images (1 unreadable)"), "{stdout}");
}

#[test]
fn a_run_killed_between_checkpoints_resumes_with_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = setup(dir.path(), "history", 4);
    let mut child = start(&recipe);
    wait_for_steps(&mut child, &run, 7);
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = train_steps(&run);
    assert!(logged.len() > 4, "steps after the checkpoint at 4 were logged: {logged:?}");
    ok(train(&recipe).output().unwrap());
    assert_eq!(train_steps(&run), (1..=18).collect::<Vec<_>>(), "no step twice");
    let evals: Vec<u64> = records(&run).into_iter().filter(|(k, _)| k == "eval").map(|(_, s)| s).collect();
    assert_eq!(evals, [6, 12, 18]);
}

#[test]
fn a_start_that_never_saved_leaves_nothing_that_refuses_the_corrected_command() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = setup(dir.path(), "first", 0);
    // A batch no machine holds: refused before anything is allocated or written.
    for set in ["data.img_size=100000", "train.batch_size=1000000000"] {
        let output = train(&recipe).args(["--set", set]).output().unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{set}: {stderr}");
        assert!(stderr.contains("GiB") && !stderr.contains("panicked"), "{stderr}");
        assert!(!run.exists(), "{set}: the run folder was created");
    }
    // Larger than the data set (but not the machine): exit 2 too, naming the key.
    let output = train(&recipe).args(["--set", "train.batch_size=5000"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("train.batch_size"));
    assert!(!run.exists());

    // Killed before its first checkpoint (18 small steps to an epoch's end), then started with
    // another learning rate: a new run.
    let mut child = train(&recipe)
        .args(["--set", "train.batch_size=2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("checkpoints").exists());
    let stdout = ok(train(&recipe).args(["--set", "optimizer.lr=1e-3"]).output().unwrap());
    assert!(!stdout.contains("resumed from"), "{stdout}");
    assert_eq!(train_steps(&run), (1..=18).collect::<Vec<_>>(), "only the second start's history");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("lr = 0.001"), "config.toml is the run that saved: {config}");
}
