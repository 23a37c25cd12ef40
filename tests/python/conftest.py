"""Shared helpers for the PyTorch parity tests: run the `pe` binary on safetensors files."""

import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
PE = os.environ.get("PE_BIN", str(ROOT / "target" / "release" / "pe"))


def run_pe(*args):
    """Runs `pe` and fails the test with its stderr when it exits non-zero."""
    result = subprocess.run([PE, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"pe {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def make_image_folder(root, classes=2, per_class=8, side=16, val_per_class=4, seed=0):
    """An ImageFolder of noisy JPEGs (`root/{train,val}/c<k>/*.jpg`), each class a different brightness."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = pathlib.Path(root) / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 120 * c, 20, (side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


#: Debian's dataset-fashion-mnist (installed by `make test` through `make fashion-mnist-package`).
FASHION_MNIST_IDX = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist(tmp_path_factory):
    """Real Fashion-MNIST JPEGs, as `pe prepare fashion-mnist` writes them from Debian's IDX files,
    cut to 32 training and 4 validation images per class so that a run on them takes seconds."""
    if not FASHION_MNIST_IDX.is_dir():
        pytest.fail(f"{FASHION_MNIST_IDX} is missing: `make fashion-mnist-package` installs Debian's dataset-fashion-mnist")
    full, root = tmp_path_factory.mktemp("fashion-mnist-full"), tmp_path_factory.mktemp("fashion-mnist")
    run_pe("prepare", "fashion-mnist", "--from", FASHION_MNIST_IDX, "--to", full)
    for split, count in (("train", 32), ("val", 4)):
        for folder in sorted((full / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    shutil.rmtree(full)
    return root


#: A short run on the `fashion_mnist` images; `extra` adds sections (`[optimizer]`, `[eval]`).
FASHION_MNIST_RECIPE = """
[model]
name = "{model}"
num_classes = 10

[data]
root = "{data}"
img_size = 28
crop_pct = 0.9
interpolation = "bicubic"
workers = 1

[schedule]
warmup_epochs = 0

[train]
epochs = {epochs}
batch_size = 32
device = "cpu"
ema_decay = {ema}

[logging]
runs_dir = "{runs}"
sample_images = 0
progress = false
{extra}"""


def train_on_fashion_mnist(folder, model, data, *, epochs=1, ema=0.9, extra=""):
    """Trains `model` on `data` (the `fashion_mnist` fixture) into `folder/runs/<model>`; returns it."""
    recipe = pathlib.Path(folder) / f"{model}.toml"
    recipe.write_text(FASHION_MNIST_RECIPE.format(model=model, data=data, runs=pathlib.Path(folder) / "runs",
                                                  epochs=epochs, ema=ema, extra=extra))
    run_pe("train", recipe)
    return pathlib.Path(folder) / "runs" / model


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path):
    return load_file(str(path))


def rust_forward(tmp_path, model_args, x, *, weights=None, save_weights=None, train=False, grads=(), grad_output=None):
    """Runs a model in Rust on `x`; returns (logits, {param: grad})."""
    inputs = {"x": x}
    if grad_output is not None:
        inputs["grad_output"] = grad_output
    save_tensors(tmp_path / "in.safetensors", inputs)
    args = ["forward", *model_args, "--input", tmp_path / "in.safetensors", "--output", tmp_path / "out.safetensors"]
    if weights is not None:
        args += ["--weights", weights]
    if save_weights is not None:
        args += ["--save-weights", save_weights]
    if train:
        args.append("--train")
    if grads:
        args += ["--grads", ",".join(grads)]
    run_pe(*args)
    out = load_tensors(tmp_path / "out.safetensors")
    return out["logits"], {name: out[f"grad.{name}"] for name in grads}


def randomize_norms(model, generator):
    """Non-trivial BN/LN affine parameters and running statistics, so eval mode tests them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


def calibrate_batch_norms(model, x):
    """BatchNorm statistics of `x` itself, so that eval-mode activations stay O(1) through 50 layers
    of random weights: with fresh statistics ResNet-50's logits reach ~1e2 and ResNet50-PE's ~1e9,
    where fp32 rounding alone is far above 1e-4. Calibrated, the logits are O(1), and onnxruntime
    differs from libtorch by ≤ 5e-5 on ResNet-50 (torch's own fp32-vs-fp64 difference is ~4e-5)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def max_abs_diff(a, b):
    assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


def max_rel_diff(a, b):
    """Max abs difference relative to the reference's largest magnitude."""
    return max_abs_diff(a, b) / max(b.double().abs().max().item(), 1e-12)
