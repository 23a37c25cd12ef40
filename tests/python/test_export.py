"""`pe export` checked by its consumers: a TorchScript file loaded by `torch.jit.load` in a fresh
Python process reproduces `pe forward`'s logits for every registry model, at batch sizes other
than the traced one; a ViT exported at another size equals the model built at that size with
timm's resampled position embedding; the JSON beside the file describes the run's recipe.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed

from conftest import PE, load_tensors, run_pe, rust_forward, save_tensors, train_on_fashion_mnist

#: Every registry model and the side it is exported at: ResNets take any size (64 keeps the
#: ResNet-50s quick on a CPU), ViTs their own.
MODELS = {
    "resnet18": 64, "resnet34": 64, "resnet50": 64, "resnet50_pe": 64, "resnet50_pe_stage34": 64,
    "deit_tiny": 224, "deit_small": 224, "vit_pe_tiny": 224, "vit_pe_small": 224,
    "deit_tiny_distilled": 224, "deit_small_distilled": 224, "vit_pe_small_distilled": 224,
    "resnet_mini": 28, "resnet_mini_pe": 28, "vit_mini": 28, "vit_pe_mini": 28,
    "resnet50_matched": 64, "vit_small_matched": 224, "resnet_mini_matched": 28, "vit_mini_matched": 28,
}

JIT_RUNNER = """
import sys, torch
from safetensors.torch import load_file, save_file
module = torch.jit.load(sys.argv[1])
inputs = load_file(sys.argv[2])
with torch.no_grad():
    save_file({k: module(x).contiguous() for k, x in inputs.items()}, sys.argv[3])
"""


def run_in_fresh_python(tmp_path, module, inputs):
    """`module` (a TorchScript file) on each named input, in a new interpreter."""
    save_tensors(tmp_path / "jit_in.safetensors", inputs)
    subprocess.run([sys.executable, "-c", JIT_RUNNER, module, tmp_path / "jit_in.safetensors",
                    tmp_path / "jit_out.safetensors"], check=True)
    return load_tensors(tmp_path / "jit_out.safetensors")


def relative_error(ours, reference):
    """Max abs difference over the reference's scale: fresh BatchNorm statistics let a deep
    ResNet's random-weight logits reach 1e9, where fp32 rounding alone exceeds 1e-4."""
    return (ours - reference).abs().max().item() / max(1.0, reference.abs().max().item())


def test_the_list_is_every_registry_model():
    listed = json.loads(run_pe("summary", "--format", "json").stdout)
    assert sorted(m["model"] for m in listed) == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_reproduces_pe_forward_at_any_batch(tmp_path, name):
    side = MODELS[name]
    weights = tmp_path / "w.safetensors"
    run_pe("forward", "--model", name, "--save-weights", weights)
    module = tmp_path / f"{name}.pt"
    run_pe("export", weights, "--model", name, "--format", "torchscript", "--out", module, "--img-size", side)
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(0))
    # Traced at batch 2: batches 1 and 3 show that no batch size was recorded.
    theirs = run_in_fresh_python(tmp_path, module, {"one": x[:1].clone(), "three": x})
    ours, _ = rust_forward(tmp_path, ["--model", name], x, weights=weights)
    assert theirs["three"].shape == ours.shape and theirs["one"].shape == (1, ours.shape[1])
    assert relative_error(theirs["three"], ours) <= 1e-4
    assert relative_error(theirs["one"], ours[:1]) <= 1e-4



@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_mnist):
    """A vit_pe_mini and a resnet_mini_pe run of one epoch on real Fashion-MNIST JPEGs."""
    tmp = tmp_path_factory.mktemp("export")
    runs = {model: train_on_fashion_mnist(tmp, model, fashion_mnist) for model in ("vit_pe_mini", "resnet_mini_pe")}
    return tmp, runs


def preprocess(path, spec):
    """The sidecar's preprocessing by hand: shorter side to resize_size, centre crop, [0, 1], normalise."""
    image = Image.open(path).convert("RGB")
    scale = spec["resize_size"] / min(image.size)
    size = (round(image.size[0] * scale), round(image.size[1] * scale))
    image = image.resize(size, Image.BICUBIC if spec["interpolation"] == "bicubic" else Image.BILINEAR)
    side = spec["input_size"][-1]
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    pixels = np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1)
    return (x - torch.tensor(spec["mean"]).view(3, 1, 1)) / torch.tensor(spec["std"]).view(3, 1, 1)


@pytest.mark.parametrize("model", ["vit_pe_mini", "resnet_mini_pe"])
@pytest.mark.parametrize("ema", [False, True])
def test_a_run_exports_with_its_classes_and_preprocessing(tmp_path, trained, fashion_mnist, model, ema):
    tmp, runs = trained
    run = runs[model]
    module = tmp_path / "model.pt"
    run_pe("export", run, "--format", "torchscript", "--out", module, *(["--ema"] if ema else []))
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar["format"] == "torchscript" and sidecar["file"] == "model.pt"
    assert sidecar["classes"] == sorted(folder.name for folder in (fashion_mnist / "train").iterdir())
    assert sidecar["input"]["shape"] == [None, 3, 28, 28] and sidecar["output"]["shape"] == [None, 10]
    assert sidecar["preprocessing"] == {
        "input_size": [3, 28, 28], "resize_size": 31, "crop_pct": 0.9, "crop_mode": "center",
        "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }
    weights_file = "ema.safetensors" if ema else "model.safetensors"
    assert sidecar["source"]["weights"].endswith(weights_file) and sidecar["source"]["ema"] == ema
    images = sorted((fashion_mnist / "val").glob("*/*.jpg"))
    x = torch.stack([preprocess(p, sidecar["preprocessing"]) for p in images])
    theirs = run_in_fresh_python(tmp_path, module, {"x": x})["x"]
    (tmp_path / "model.json").write_text(json.dumps(sidecar["model"]))
    ours, _ = rust_forward(tmp_path, ["--config", tmp_path / "model.json"], x,
                           weights=run / "checkpoints" / "last" / weights_file)
    assert (theirs - ours).abs().max().item() <= 1e-4
    assert ours.std(dim=0).max() > 1e-3  # the images give different logits: a real check


def test_a_vit_exported_at_another_size_uses_timms_resampled_position_embedding(tmp_path, trained):
    tmp, runs = trained
    run = runs["vit_pe_mini"]
    exported = tmp_path / "vit56.safetensors"
    result = run_pe("export", run, "--format", "safetensors", "--out", exported, "--img-size", 56)
    assert "pos_embed resampled from a 7×7 to a 14×14 patch grid" in result.stdout
    trained_weights = load_tensors(run / "checkpoints" / "last" / "model.safetensors")
    ours = load_tensors(exported)
    reference = resample_abs_pos_embed(trained_weights["pos_embed"], new_size=[14, 14], num_prefix_tokens=1,
                                       interpolation="bicubic", antialias=True)
    assert (ours["pos_embed"] - reference).abs().max().item() <= 1e-6
    for name, tensor in trained_weights.items():
        if name != "pos_embed":
            assert torch.equal(ours[name], tensor), name
    assert json.loads((tmp_path / "vit56.safetensors.json").read_text())["input"]["shape"] == [None, 3, 56, 56]
    # The TorchScript file at 56 px computes what that model computes.
    module = tmp_path / "vit56.pt"
    run_pe("export", run, "--format", "torchscript", "--out", module, "--img-size", 56, "--batch", 2)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    theirs = run_in_fresh_python(tmp_path, module, {"x": x})["x"]
    config = json.loads((tmp_path / "vit56.safetensors.json").read_text())["model"]
    (tmp_path / "vit56.json").write_text(json.dumps(config))
    reference_logits, _ = rust_forward(tmp_path, ["--config", tmp_path / "vit56.json"], x, weights=exported)
    assert (theirs - reference_logits).abs().max().item() <= 1e-4


def test_bare_weights_need_a_model_and_a_batch_is_a_positive_number(tmp_path):
    weights = tmp_path / "w.safetensors"
    rust_forward(tmp_path, ["--model", "vit_mini"], torch.zeros(1, 3, 28, 28), save_weights=weights)
    result = subprocess.run([PE, "export", weights, "--format", "torchscript", "--out", tmp_path / "m.pt"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "name the model with --model" in result.stderr
    result = subprocess.run([PE, "export", weights, "--model", "vit_mini", "--format", "torchscript",
                             "--out", tmp_path / "m.pt", "--batch", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "expected `dynamic` or a batch size >= 1" in result.stderr
    assert not (tmp_path / "m.pt").exists()


def node_kinds(module_file):
    return {node.kind() for node in torch.jit.load(module_file).inlined_graph.nodes()}


def test_torchscript_is_frozen_with_batch_norm_folded_unless_asked_not_to(tmp_path):
    weights = tmp_path / "w.safetensors"
    run_pe("forward", "--model", "resnet_mini_pe", "--save-weights", weights)
    for flags, frozen in (([], True), (["--no-freeze"], False)):
        module = tmp_path / f"m{frozen}.pt"
        run_pe("export", weights, "--model", "resnet_mini_pe", "--format", "torchscript", "--out", module, *flags)
        assert ("aten::batch_norm" in node_kinds(module)) != frozen
        assert json.loads((tmp_path / f"m{frozen}.pt.json").read_text())["frozen"] == frozen
