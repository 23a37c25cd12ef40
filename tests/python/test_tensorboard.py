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
