"""A short training run writes event files that the real TensorBoard reads back."""

import subprocess
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import PE, make_image_folder, run_pe


RECIPE = """
[model]
arch = "vit"
img_size = 16
patch_size = 4
in_channels = 3
num_classes = 2
embed_dim = 24
depth = 1
heads = 2
mlp_ratio = 2.0
pe_attention = true
pe_mlp = true

[data]
root = "{data}"
img_size = 16
workers = 1

[schedule]
warmup_epochs = 0

[train]
epochs = 2
batch_size = 4
device = "cpu"

[optimizer]
base_batch = 0

[logging]
runs_dir = "{runs}"
every_steps = 1
sample_images = 2
progress = false
"""


def test_event_files_read_back_with_tensorboard(tmp_path):
    make_image_folder(tmp_path / "data")
    recipe = tmp_path / "tb.toml"
    recipe.write_text(RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs"))
    run_pe("train", recipe)
    events = EventAccumulator(str(tmp_path / "runs" / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ["train/loss", "train/lr", "train/grad_norm", "perf/img_per_s", "perf/data_wait_fraction",
                "eval/acc1", "eval/acc5", "eval/loss"]:
        assert tag in tags["scalars"], tag
    # 16 images / batch 4 = 4 steps per epoch, 2 epochs; one eval per epoch.
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("eval/acc1")] == [4, 8]
    assert all(0.0 <= e.value <= 100.0 for e in events.Scalars("eval/acc1"))
    assert sorted(tags["images"]) == ["inputs/0", "inputs/1"]
    image = events.Images("inputs/0")[0]
    assert (image.width, image.height) == (16, 16)


def test_a_killed_run_keeps_every_event_up_to_its_last_checkpoint(tmp_path):
    """SIGKILL right after a checkpoint is published: TensorBoard still reads every train/loss point up to it."""
    make_image_folder(tmp_path / "data", per_class=40)
    recipe = tmp_path / "tb.toml"
    text = RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs").replace("epochs = 2", "epochs = 50")
    recipe.write_text(text.replace('device = "cpu"', 'device = "cpu"\ncheckpoint_every_steps = 5'))
    run = tmp_path / "runs" / "tb"
    process = subprocess.Popen([PE, "train", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, deadline = run / "checkpoints" / "last", time.monotonic() + 120
    while not (last.exists() and last.resolve().name >= "step-000000015"):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint at step 15 within 120 s"
        time.sleep(0.002)
    process.kill()
    process.wait()
    saved = int(last.resolve().name.split("-")[1])
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    steps = {e.step for e in events.Scalars("train/loss")}
    assert set(range(1, saved + 1)) <= steps, f"checkpoint at step {saved}, events for {sorted(steps)}"


def _kill_after_steps(recipe, run_dir, steps, *extra):
    """Starts `pe train`, SIGKILLs it once metrics.jsonl has `steps` train lines."""
    process = subprocess.Popen([PE, "train", str(recipe), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count('"type":"train"') >= steps:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait()


def _steps(run_dir, tag):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_a_killed_and_resumed_run_is_one_series_in_tensorboard(tmp_path):
    import json

    make_image_folder(tmp_path / "data")
    recipe = tmp_path / "tb.toml"
    recipe.write_text(RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs").replace("epochs = 2", "epochs = 6"))
    run_dir = tmp_path / "runs" / "tb"
    every = ("--set", "train.checkpoint_every_steps=3")
    # Killed past the checkpoint at step 3: steps 4.. were logged and are trained again.
    _kill_after_steps(recipe, run_dir, 5, *every)
    run_pe("train", recipe, *every)
    assert _steps(run_dir, "train/loss") == list(range(1, 25))
    assert _steps(run_dir, "eval/acc1") == [4, 8, 12, 16, 20, 24]

    # A checkpoint from before checkpoints recorded where the logs ended: the old event files stay,
    # and the resumed run's session start makes TensorBoard drop what lay beyond the checkpoint.
    recipe2 = tmp_path / "tb2.toml"
    recipe2.write_text(recipe.read_text())
    run2 = tmp_path / "runs" / "tb2"
    _kill_after_steps(recipe2, run2, 5, *every)
    last = (run2 / "checkpoints" / "last").resolve()
    state = json.loads((last / "state.json").read_text())
    del state["logs"]
    (last / "state.json").write_text(json.dumps(state))
    run_pe("train", recipe2, *every)
    assert len(list(run2.glob("events.out.tfevents.*"))) == 2
    assert _steps(run2, "train/loss") == list(range(1, 25))
