"""Optimizer parameter groups against timm: layer-wise learning-rate decay (`optimizer.layer_decay`)
as timm's `param_groups_layer_decay` assigns it, and freezing for a linear probe.

A new run writes `param_groups.json` (every trained tensor's learning-rate scale and weight decay);
the reference is timm's function applied to a module holding the very tensors of that run.
"""

import json
import subprocess

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay

from conftest import PE, load_tensors, max_abs_diff, run_pe
from test_init_weights import RECIPE, data, recipe  # noqa: F401  (the `data` fixture)


def module_holding(tensors):
    """An nn.Module whose named_parameters are `tensors` (dotted names), with timm's ViT block ids."""
    root = torch.nn.Module()
    for name, tensor in tensors.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(tensor))
    root.group_matcher = VisionTransformer.group_matcher.__get__(root)
    return root


def timm_assignment(tensors, layer_decay, weight_decay):
    module = module_holding(tensors)
    names = {id(p): n for n, p in module.named_parameters()}
    groups = param_groups_layer_decay(module, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=["pos_embed", "cls_token"])
    return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


def our_assignment(run_dir):
    groups = json.loads((run_dir / "param_groups.json").read_text())
    return {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name in g["params"]}


@pytest.mark.parametrize("model", ["deit_small", "vit_pe_small"])
def test_layer_decay_scales_equal_timms(model, tmp_path, data):  # noqa: F811
    run_pe("train", recipe(tmp_path, data, model=model), "--set", "optimizer.layer_decay=0.65",
           "--set", "optimizer.weight_decay=0.05")
    run_dir = tmp_path / "runs" / "finetune"
    ours = our_assignment(run_dir)
    tensors = load_tensors(run_dir / "checkpoints" / "last" / "model.safetensors")
    expected = timm_assignment(tensors, 0.65, 0.05)
    assert ours.keys() == expected.keys()
    for name, (scale, decay) in expected.items():
        assert ours[name] == pytest.approx((scale, decay), rel=1e-12, abs=0), name
    # timm's ids: embeddings 0, block i i + 1, the norm with block 11 (12), the head 13: 0.65^(13 - id).
    assert ours["head.weight"][0] == 1.0 and ours["norm.weight"][0] == pytest.approx(0.65)
    assert ours["pos_embed"][0] == pytest.approx(0.65 ** 13)


@pytest.mark.parametrize("model,head", [("vit_mini", "head"), ("resnet_mini_pe", "fc")])
def test_a_linear_probe_trains_the_head_only(tmp_path, data, model, head):  # noqa: F811
    """Everything but the head stays bit-identical, BatchNorm's running statistics included: a
    frozen BatchNorm normalises with the statistics it was trained with, in train mode too."""
    base = recipe(tmp_path, data, model=model, img=28, name="base")
    run_pe("train", base)
    start = load_tensors(tmp_path / "runs" / "base" / "checkpoints" / "last" / "model.safetensors")
    probe = recipe(tmp_path, data, model=model, img=28, name="probe")
    run_pe("train", probe, "--set", f"model.init={tmp_path / 'runs' / 'base'}", "--set", "optimizer.lr=1e-2",
           "--set", "train.max_steps=3", "--set", 'optimizer.freeze=["*"]', "--set", f'optimizer.train=["{head}.*"]')
    groups = our_assignment(tmp_path / "runs" / "probe")
    assert sorted(groups) == [f"{head}.bias", f"{head}.weight"]
    probed = load_tensors(tmp_path / "runs" / "probe" / "checkpoints" / "last" / "model.safetensors")
    assert any(name.endswith("running_mean") for name in start) == (model == "resnet_mini_pe")
    for name, tensor in start.items():
        if name.startswith(f"{head}."):
            assert max_abs_diff(probed[name], tensor) > 1e-4, name
        else:
            assert max_abs_diff(probed[name], tensor) == 0, name


def test_a_pattern_that_matches_nothing_is_an_exit_2_error(tmp_path, data):  # noqa: F811
    result = subprocess.run([PE, "train", recipe(tmp_path, data, model="vit_mini", img=28),
                             "--set", 'optimizer.freeze=["backbone.*"]'], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert 'optimizer.freeze: the pattern "backbone.*" matches no parameter of the model' in result.stderr
