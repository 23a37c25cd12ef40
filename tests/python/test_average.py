"""`pe average` and checkpoint retention against computations made here: the uniform average is
numpy's float64 mean of the step folders' safetensors, the greedy soup's numbers are what `pe eval`
reports for the very folders, and every refusal is its own exit-2 message.
"""

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import PE, load_tensors, make_image_folder, run_pe

RECIPE = """
[model]
name = "{model}"
num_classes = {classes}

[data]
root = "{data}"
img_size = 28
workers = 1

[schedule]
warmup_epochs = 0

[train]
epochs = 3
batch_size = 4
device = "cpu"
ema_decay = 0.9
keep_checkpoints = 3
keep_every_epochs = 1

[optimizer]
lr = 5e-3

[logging]
runs_dir = "{runs}"
sample_images = 0
progress = false
"""


def train(tmp_path, data, name, model="resnet_mini_pe", classes=3):
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text(RECIPE.format(model=model, classes=classes, data=data, runs=tmp_path / "runs"))
    run_pe("train", recipe, "--name", name)
    return recipe, tmp_path / "runs" / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A resnet_mini_pe run of 3 epochs of 3 steps that kept its last 3 step folders."""
    tmp = tmp_path_factory.mktemp("average")
    data = tmp / "data"
    make_image_folder(data, classes=3, per_class=4, val_per_class=2)
    recipe, run_dir = train(tmp, data, "base")
    return tmp, data, recipe, run_dir


def step_folders(run_dir):
    return sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))


def numpy_mean(folders, file="model.safetensors"):
    loaded = [load_tensors(folder / file) for folder in folders]
    return {name: np.mean([t[name].double().numpy() for t in loaded], axis=0) for name in loaded[0]}


def test_retention_keeps_the_newest_step_folders_and_every_epoch_end(run):
    _, _, _, run_dir = run
    # 12 samples / batch 4 = 3 steps an epoch; epoch ends at steps 3, 6, 9, all kept (keep_every_epochs = 1).
    assert [p.name for p in step_folders(run_dir)] == ["step-000000003", "step-000000006", "step-000000009"]


@pytest.mark.parametrize("ema", [False, True])
def test_the_uniform_average_is_the_mean_of_the_checkpoints(run, ema):
    tmp, _, _, run_dir = run
    out = tmp / f"average-{ema}"
    run_pe("average", run_dir, "--last", 2, "--out", out, *(["--ema"] if ema else []))
    expected = numpy_mean(step_folders(run_dir)[-2:], "ema.safetensors" if ema else "model.safetensors")
    ours = load_tensors(out / "model.safetensors")
    assert set(ours) == set(expected)
    for name, mean in expected.items():
        np.testing.assert_allclose(ours[name].double().numpy(), mean, atol=1e-6, err_msg=name)
    record = json.loads((out / "average.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [6, 9] and record["ema"] == ema


def test_recomputed_batch_norm_changes_the_statistics_only(run):
    tmp, _, _, run_dir = run
    out = tmp / "recomputed"
    result = run_pe("average", run_dir, "--recompute-bn", 2, "--out", out)
    assert "BatchNorm recomputed on 2 training batches" in result.stdout
    expected = numpy_mean(step_folders(run_dir))
    ours = load_tensors(out / "model.safetensors")
    statistics = [n for n in expected if n.endswith(("running_mean", "running_var"))]
    assert statistics
    for name, mean in expected.items():
        difference = np.abs(ours[name].double().numpy() - mean).max()
        if name in statistics:
            continue
        assert difference < 1e-6, name
    assert max(np.abs(ours[n].double().numpy() - expected[n]).max() for n in statistics) > 1e-3


def pe_eval_top1(recipe, checkpoint):
    result = run_pe("eval", recipe, "--checkpoint", checkpoint)
    return json.loads(result.stdout.strip().splitlines()[-1])["acc1"]


def test_a_greedy_soup_reports_what_pe_eval_measures_and_is_a_checkpoint(run):
    tmp, _, recipe, run_dir = run
    run_pe("average", run_dir, "--greedy")
    out = run_dir / "checkpoints" / "soup-3"
    record = json.loads((out / "average.json").read_text())
    for considered in record["checkpoints"]:
        assert considered["top1"] == pytest.approx(pe_eval_top1(recipe, considered["dir"]), abs=1e-9)
    assert record["top1"] == pytest.approx(pe_eval_top1(recipe, out), abs=1e-9)
    best_alone = max(c["top1"] for c in record["checkpoints"])
    assert record["top1"] >= best_alone
    # The best checkpoint alone starts the soup.
    assert any(c["used"] and c["top1"] == best_alone for c in record["checkpoints"])
    # Resuming the run is unaffected by the soup folder beside its step folders, and model.init takes it.
    run_pe("train", recipe, "--name", "base")
    assert out.is_dir()
    run_pe("train", recipe, "--name", "from-soup", "--set", f"model.init={out}", "--set", "train.max_steps=1")


def refused(*args):
    result = subprocess.run([PE, "average", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_other_architectures_class_lists_and_too_few_checkpoints_are_refused(run):
    tmp, data, _, run_dir = run
    newest = step_folders(run_dir)[-1]
    _, vit = train(tmp, data, "vit", model="vit_mini")
    assert "is another architecture than" in refused(newest, step_folders(vit)[-1], "--out", tmp / "x")
    other = tmp / "other-data"
    make_image_folder(other, classes=3, per_class=4, val_per_class=2)
    for split in ("train", "val"):
        (other / split / "c2").rename(other / split / "d2")
    _, renamed = train(tmp, other, "renamed")
    assert "was trained on another class list than" in refused(newest, step_folders(renamed)[-1], "--out", tmp / "x")
    assert "1 checkpoint(s) to average" in refused(run_dir, "--last", 1)
    assert "fewer than --last 5" in refused(run_dir, "--last", 5)
    copy = tmp / "runs" / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    assert "from several runs: say where to write with --out" in refused(newest, step_folders(copy)[-1])
    assert not (tmp / "x").exists()
