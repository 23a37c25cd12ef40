//! Data-parallel training on c10d (Gloo on loopback, 2 processes): the same arithmetic as one
//! process on the whole batch, ranks that never drift apart, sharded evaluation that counts each
//! image once, a killed rank that fails the run loudly and resumes exactly, and torchrun and
//! `pe launch` agreeing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tch::Tensor;

/// A two-block ViT with tied attention and MLP, no dropout, no drop-path, no Mixup, fp32, SGD
/// (AdamW's normalisation would turn float-rounding noise in near-zero gradients into full-size
/// updates and compare rounding rather than the reduction).
fn vit_recipe(dir: &Path, data: &Path, runs: &Path, batch: usize, accum: usize) -> PathBuf {
    let text = format!(
        r#"name = "vit"
[model]
arch = "vit"
img_size = 16
patch_size = 4
in_channels = 3
num_classes = 3
embed_dim = 24
depth = 2
heads = 2
mlp_ratio = 2.0
pe_attention = true
pe_mlp = true

[data]
root = {data:?}
img_size = 16
workers = 1

[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
base_batch = 0

[schedule]
name = "constant"
warmup_epochs = 0

[train]
epochs = 5
batch_size = {batch}
accum_steps = {accum}
device = "cpu"
seed = 3
threads = 1
max_steps = 5

[logging]
runs_dir = {runs:?}
every_steps = 1
progress = false
"#
    );
    let path = dir.join(format!("vit_b{batch}_a{accum}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn launch(nproc: usize) -> Command {
    let mut command = pe();
    command.args(["launch", "--nproc", &nproc.to_string(), "--"]);
    command
}

fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    let mut named = Tensor::read_safetensors(last.join("model.safetensors")).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_processes_on_half_batches_train_like_one_process_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_image_folder(&data, 3, 8, 1, 16);
    let runs = dir.path().join("runs");
    for accum in [1, 2] {
        let one = vit_recipe(dir.path(), &data, &runs, 8, accum);
        let two = vit_recipe(dir.path(), &data, &runs, 4, accum);
        let single = format!("single_a{accum}");
        let pair = format!("pair_a{accum}");
        run_ok(pe().arg("train").arg(&one).args(["--name", &single]), "1 process");
        run_ok(launch(2).arg("train").arg(&two).args(["--name", &pair]), "2 processes");
        let (a, b) = (weights(&runs.join(&single)), weights(&runs.join(&pair)));
        let difference = max_difference(&a, &b);
        assert!(difference <= 1e-5, "accum {accum}: parameters differ by {difference} after 5 steps");
    }
}

/// The tiny BatchNorm ResNet recipe on a 9-image validation split (odd, so 2 shards differ).
fn resnet_run(dir: &Path, name: &str, timeout_s: u32) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    if !data.exists() {
        tiny_image_folder(&data, 3, 16, 3, 16);
    }
    let runs = dir.join("runs");
    let extra = format!("dist_timeout_s = {timeout_s}\nepochs = 2");
    let recipe = tiny_recipe(dir, name, &data, &runs, &extra, "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("epochs = 3\n", "");
    std::fs::write(&recipe, text).unwrap();
    (recipe, runs.join(name))
}

#[test]
fn batchnorm_ranks_stay_identical_and_sharded_eval_counts_each_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = resnet_run(dir.path(), "bn", 60);
    // Every checkpoint (here every step) checks that both ranks hold bit-identical parameters and
    // BatchNorm statistics, and fails the run otherwise.
    let stdout = run_ok(launch(2).arg("train").arg(&recipe), "2 processes");
    assert!(stdout.contains("on 9 images"), "{stdout}");
    let top1 = |text: &str| -> f64 {
        let at =
            text.find("final top-1 ").map(|i| i + 12).or_else(|| text.find("top-1 ").map(|i| i + 6)).unwrap();
        text[at..].split('%').next().unwrap().parse().unwrap()
    };
    let last = std::fs::canonicalize(run.join("checkpoints/last")).unwrap();
    let single = run_ok(pe().arg("eval").arg(&recipe).arg("--checkpoint").arg(&last), "pe eval");
    assert!(single.contains("on 9 images"), "{single}");
    assert_eq!(top1(&stdout), top1(&single), "2-process eval vs 1-process eval:\n{stdout}\n{single}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Rank `rank` of 2 with torchrun's variables, rank 0 hosting the store.
fn rank(recipe: &Path, rank: usize, port: u16) -> std::process::Child {
    pe().arg("train")
        .arg(recipe)
        .envs([
            ("RANK", rank.to_string()),
            ("LOCAL_RANK", rank.to_string()),
            ("WORLD_SIZE", "2".into()),
            ("LOCAL_WORLD_SIZE", "2".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.to_string()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_rank_fails_the_run_loudly_and_the_rerun_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (reference, reference_run) = resnet_run(dir.path(), "reference", 5);
    run_ok(launch(2).arg("train").arg(&reference), "uninterrupted");
    let expected = step_losses(&reference_run);

    let (recipe, run) = resnet_run(dir.path(), "killed", 5);
    let port = free_port();
    let mut rank0 = rank(&recipe, 0, port);
    let mut rank1 = rank(&recipe, 1, port);
    wait_for_steps(&mut rank0, &run, 3);
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let killed = Instant::now();
    let out = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 must fail when rank 1 dies: {stderr}");
    assert!(killed.elapsed() < Duration::from_secs(15), "rank 0 took {:?} to notice", killed.elapsed());
    // c10d names the rank and the failure: the peer's socket closed or reset (or, at worst, the
    // timeout).
    let named = ["by peer", "timed out", "Timed out"].iter().any(|m| stderr.contains(m));
    assert!(stderr.contains("error:") && stderr.contains("rank 0/2") && named, "{stderr}");
    assert!(step_losses(&run).len() < expected.len(), "killed mid-run");

    let stdout = run_ok(launch(2).arg("train").arg(&recipe), "rerun");
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_same_losses(&step_losses(&run), &expected);
}

#[test]
fn torchrun_and_pe_launch_give_the_same_step_losses() {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/torchrun");
    let dir = tempfile::tempdir().unwrap();
    let (recipe, launched) = resnet_run(dir.path(), "launched", 60);
    run_ok(launch(2).arg("train").arg(&recipe), "pe launch");
    let torchrun_args =
        ["--standalone", "--nproc-per-node", "2", "--no-python", env!("CARGO_BIN_EXE_pe"), "train"];
    run_ok(Command::new(torchrun).args(torchrun_args).arg(&recipe).args(["--name", "torchrun"]), "torchrun");
    let (a, b) = (step_losses(&launched), step_losses(&launched.with_file_name("torchrun")));
    assert_eq!(a.len(), 8, "48 images / (2 × 6) per step, 2 epochs");
    assert_eq!(a, b);
}

#[test]
fn another_process_count_resumes_at_an_epoch_boundary_and_is_refused_inside_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, run) = resnet_run(dir.path(), "world", 60);
    let longer = ["--set", "train.epochs=3", "--resume", "--allow-change", "train.epochs"];
    // 2 processes to the end of epoch 2, then 1 process continues for a third.
    run_ok(launch(2).arg("train").arg(&recipe), "2 processes");
    let stdout = run_ok(pe().arg("train").arg(&recipe).args(longer), "1 process resumes");
    assert!(stdout.contains("resumed from") && stdout.contains("epoch 2"), "{stdout}");
    assert_eq!(step_losses(&run).len(), 8 + 8, "a third epoch of 48 images / 6 on one process");

    // Stopped inside an epoch by 2 processes: a single process must not continue it.
    let (recipe, _) = resnet_run(dir.path(), "inside", 60);
    let stop = ["--set", "train.max_steps=2"];
    run_ok(launch(2).arg("train").arg(&recipe).args(stop), "2 processes, 2 steps");
    let out = pe()
        .arg("train")
        .arg(&recipe)
        .args(["--set", "train.max_steps=3", "--resume", "--allow-change", "train.max_steps"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("saved by 2 process(es)") && stderr.contains("this run has 1"), "{stderr}");
}

#[test]
fn ctrl_c_and_sigterm_to_pe_launch_save_once_and_exit_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let (recipe, run) = resnet_run(dir.path(), &format!("stop{code}"), 60);
        let text = std::fs::read_to_string(&recipe).unwrap().replace("epochs = 2", "epochs = 40");
        std::fs::write(&recipe, text).unwrap();
        let mut launcher = launch(2).arg("train").arg(&recipe).stdout(Stdio::null()).spawn().unwrap();
        wait_for_steps(&mut launcher, &run, 2);
        let sent = Command::new("kill").args([signal, &launcher.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let status = launcher.wait().unwrap();
        assert_eq!(status.code(), Some(code), "pe launch after kill {signal}");
        let last = std::fs::canonicalize(run.join("checkpoints/last")).expect("a checkpoint");
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(last.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["step"].as_u64().unwrap(), step_losses(&run).len() as u64, "saved where it stopped");
    }
}
