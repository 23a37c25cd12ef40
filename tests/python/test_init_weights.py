"""`[model] init`: a run that starts from weights timm / torchvision wrote, or from another run.

Every check compares with what PyTorch computes or wrote: the tensors of the timm/torchvision
model, timm's own `resample_abs_pos_embed`, timm's logits. A learning rate of 1e-30 makes the one
training step a run needs before it saves a checkpoint leave the weights as they were loaded.
"""

import json
import subprocess
import tomllib

import pytest
import timm
import torch
import torchvision
from timm.layers import resample_abs_pos_embed

from conftest import PE, load_tensors, make_image_folder, max_abs_diff, rust_forward, run_pe, save_tensors

RECIPE = """
[model]
name = "{model}"
num_classes = 3

[data]
root = "{data}"
img_size = {img}
workers = 1

[schedule]
warmup_epochs = 0
warmup_lr = 0.0
min_lr = 0.0

[train]
epochs = 1
batch_size = 4
max_steps = 1
device = "cpu"

[optimizer]
lr = 1e-30
weight_decay = 0.0
base_batch = 0

[logging]
runs_dir = "{runs}"
sample_images = 0
progress = false
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(root, classes=3, per_class=4, val_per_class=2)
    return root


@pytest.fixture(scope="module")
def deit_tiny(tmp_path_factory):
    """timm's deit_tiny (1000 classes) with random weights, as a safetensors file."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path_factory.mktemp("weights") / "deit_tiny.safetensors"
    save_tensors(path, model.state_dict())
    return model, path


def recipe(tmp_path, data, model="deit_tiny", img=224, name="finetune"):
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(model=model, data=data, img=img, runs=tmp_path / "runs"))
    return path


def train(*args):
    return subprocess.run([PE, "train", *map(str, args)], capture_output=True, text=True)


def checkpoint(tmp_path, name="finetune"):
    return load_tensors(tmp_path / "runs" / name / "checkpoints" / "last" / "model.safetensors")


def test_timm_weights_start_a_run_with_a_new_head_and_give_timms_logits(tmp_path, data, deit_tiny):
    model, weights = deit_tiny
    result = run_pe("train", recipe(tmp_path, data), "--set", f"model.init={weights}")
    assert f"model.init: starting from {weights}" in result.stdout
    assert "model.init: the weights have 1000 classes, this model 3: head.* re-initialised" in result.stdout
    ours = checkpoint(tmp_path)
    reference = model.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        if name.startswith("head."):
            assert ours[name].shape[0] == 3
        else:
            assert max_abs_diff(ours[name], tensor) <= 1e-6, name
    # timm's model with our new head computes the logits the Rust model computes.
    model.reset_classifier(3)
    model.head.load_state_dict({"weight": ours["head.weight"], "bias": ours["head.bias"]})
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    run_dir = tmp_path / "runs" / "finetune"
    config = tomllib.loads((run_dir / "config.toml").read_text())["model"]
    assert config["init"] == str(weights)
    architecture = {k: v for k, v in config.items() if not k.startswith("init") and k != "head_init_scale"}
    (tmp_path / "model.json").write_text(json.dumps(architecture))
    logits, _ = rust_forward(tmp_path, ["--config", tmp_path / "model.json"], x,
                             weights=run_dir / "checkpoints" / "last" / "model.safetensors")
    with torch.no_grad():
        assert max_abs_diff(logits, model(x)) <= 1e-4


def test_head_init_scale_scales_the_new_head(tmp_path, data, deit_tiny):
    _, weights = deit_tiny
    run_pe("train", recipe(tmp_path, data, name="plain"), "--set", f"model.init={weights}")
    run_pe("train", recipe(tmp_path, data, name="scaled"), "--set", f"model.init={weights}",
           "--set", "model.head_init_scale=0.001")
    plain, scaled = checkpoint(tmp_path, "plain"), checkpoint(tmp_path, "scaled")
    # The same seed draws the same fresh head; the scale multiplies it.
    assert plain["head.weight"].abs().max() > 1e-3
    assert max_abs_diff(scaled["head.weight"], 0.001 * plain["head.weight"]) <= 1e-9
    assert max_abs_diff(scaled["blocks.0.attn.qkv.weight"], plain["blocks.0.attn.qkv.weight"]) == 0


def test_torchvision_resnet_weights_start_a_run_with_a_new_fc(tmp_path, data):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    weights = tmp_path / "resnet18.safetensors"
    save_tensors(weights, model.state_dict())
    result = run_pe("train", recipe(tmp_path, data, model="resnet18", img=32), "--set", f"model.init={weights}")
    assert "this model 3: fc.* re-initialised" in result.stdout
    ours = checkpoint(tmp_path)
    for name, tensor in model.named_parameters():
        if not name.startswith("fc."):
            assert max_abs_diff(ours[name], tensor.detach()) <= 1e-6, name
    assert ours["fc.weight"].shape == (3, 512)


def test_the_position_embedding_is_resampled_as_timm_does(tmp_path, data, deit_tiny):
    model, weights = deit_tiny
    result = run_pe("train", recipe(tmp_path, data, img=112), "--set", "model.img_size=112",
                    "--set", f"model.init={weights}")
    assert "pos_embed resampled from a 14×14 to a 7×7 patch grid" in result.stdout
    expected = resample_abs_pos_embed(model.pos_embed.detach(), [7, 7], num_prefix_tokens=1)
    ours = checkpoint(tmp_path)["pos_embed"]
    assert ours.shape == (1, 50, 192)
    assert max_abs_diff(ours, expected) <= 1e-6
    assert max_abs_diff(ours[:, 0], model.pos_embed.detach()[:, 0]) == 0  # the class token's is kept


def refused(tmp_path, data, weights, *sets):
    result = train(recipe(tmp_path, data), "--set", f"model.init={weights}", *sum((["--set", s] for s in sets), []))
    assert result.returncode == 2, result.stderr
    assert "panicked" not in result.stderr
    assert not (tmp_path / "runs" / "finetune" / "checkpoints").exists(), "a refused start leaves no run"
    return result.stderr


def test_each_mismatch_is_its_own_exit_2_error_and_init_exclude_relaxes_it(tmp_path, data, deit_tiny):
    model, _ = deit_tiny
    state = model.state_dict()
    broken = tmp_path / "broken.safetensors"

    save_tensors(broken, {k: v for k, v in state.items() if not k.startswith("blocks.3.attn.qkv.")})
    error = refused(tmp_path, data, broken)
    assert "missing: blocks.3.attn.qkv.bias, blocks.3.attn.qkv.weight" in error and "unexpected" not in error

    save_tensors(broken, {**state, "blocks.0.mlp.fc1.bias": torch.zeros(10)})
    error = refused(tmp_path, data, broken)
    assert "wrong shape: blocks.0.mlp.fc1.bias [10] vs model [768]" in error and "missing" not in error

    save_tensors(broken, {**state, "dist_token": torch.zeros(1, 1, 192)})
    error = refused(tmp_path, data, broken)
    assert "unexpected: dist_token" in error

    # The weights' 1000 classes kept, but the data has 3: said before anything starts.
    error = refused(tmp_path, data, deit_tiny[1], "model.num_classes=1000")
    assert "set model.num_classes = 3" in error and "re-initialised" in error

    save_tensors(broken, {k: v for k, v in state.items() if not k.startswith("blocks.3.attn.qkv.")})
    result = run_pe("train", recipe(tmp_path, data), "--set", f"model.init={broken}",
                    "--set", 'model.init_exclude=["blocks.3.attn.qkv.*"]')
    assert "2 tensor(s) kept their fresh initialisation (model.init_exclude)" in result.stdout


def test_weights_of_another_architecture_are_listed_grouped(tmp_path, data, deit_tiny):
    # deit_tiny's weights into its PE twin: 12 blocks of renamed tensors read as one line each.
    result = train(recipe(tmp_path, data, model="vit_pe_tiny"), "--set", f"model.init={deit_tiny[1]}")
    assert result.returncode == 2, result.stderr
    assert "blocks.*.attn.qkv.weight ×12" in result.stderr
    assert len(result.stderr.splitlines()) < 25, result.stderr


def test_a_run_folder_gives_its_best_checkpoint_and_init_ema_its_ema(tmp_path, data):
    first = recipe(tmp_path, data, model="vit_mini", img=28, name="first")
    run_pe("train", first, "--set", "train.max_steps=0", "--set", "train.ema_decay=0.5",
           "--set", "optimizer.lr=1e-3", "--set", "model.num_classes=3")
    best = tmp_path / "runs" / "first" / "checkpoints" / "best"
    second = recipe(tmp_path, data, model="vit_mini", img=28)
    run_pe("train", second, "--set", f"model.init={tmp_path / 'runs' / 'first'}", "--set", "model.init_ema=true")
    ema = load_tensors(best / "ema.safetensors")
    trained = load_tensors(best / "model.safetensors")
    ours = checkpoint(tmp_path)
    assert max_abs_diff(ours["blocks.0.mlp.fc1.weight"], ema["blocks.0.mlp.fc1.weight"]) <= 1e-7
    assert max_abs_diff(ema["blocks.0.mlp.fc1.weight"], trained["blocks.0.mlp.fc1.weight"]) > 1e-4


def test_resuming_with_other_weights_is_refused(tmp_path, data, deit_tiny):
    model, _ = deit_tiny
    weights = tmp_path / "w.safetensors"
    save_tensors(weights, model.state_dict())
    run_pe("train", recipe(tmp_path, data), "--set", f"model.init={weights}")
    state = model.state_dict()
    save_tensors(weights, {**state, "norm.weight": state["norm.weight"] + 1})
    result = train(recipe(tmp_path, data), "--set", f"model.init={weights}", "--set", "train.max_steps=2",
                   "--resume", "--allow-change", "train.max_steps")
    assert result.returncode == 2, result.stderr
    assert "init.digest" in result.stderr


def test_a_fine_tune_resumes_exactly(tmp_path, data, deit_tiny):
    _, weights = deit_tiny
    common = ["--set", f"model.init={weights}", "--set", "optimizer.lr=1e-4", "--set", "model.img_size=64",
              "--set", "data.img_size=64"]
    run_pe("train", recipe(tmp_path, data, name="whole"), *common, "--set", "train.max_steps=3",
           "--set", "logging.every_steps=1")
    split = recipe(tmp_path, data, name="split")
    run_pe("train", split, *common, "--set", "train.max_steps=1", "--set", "logging.every_steps=1")
    run_pe("train", split, *common, "--set", "train.max_steps=3", "--set", "logging.every_steps=1",
           "--resume", "--allow-change", "train.max_steps")

    def losses(name):
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["type"] == "train"}

    whole, resumed = losses("whole"), losses("split")
    assert sorted(whole) == sorted(resumed) == [1, 2, 3]
    for step in whole:
        assert abs(whole[step] - resumed[step]) <= 1e-6 * max(1.0, abs(whole[step])), step
