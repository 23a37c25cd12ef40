"""`pe convert`: a trained baseline turned into its PE twin, checked from outside.

The naive method is the paper's tie by definition — each PE matrix the mean of the baseline
matrices it replaces (`W = (fc1 + fc2ᵀ)/2`, `Wq = (q + projᵀ)/2`, `Wkv = (k + vᵀ)/2`, a stage's
`W` the mean of its conv1s and conv3ᵀs) — and is recomputed here in PyTorch from the baseline's
file. The symmetric method's file is run by the `pe_models` package on the run's validation
images, which must reproduce the report's numbers, and `model.init` must start a run from it.
"""

import json
import pathlib
import tomllib

import pytest
import torch
from PIL import Image

from conftest import FASHION_MNIST_RECIPE, load_tensors, max_abs_diff, run_pe, train_on_fashion_mnist

import pe_models

# family: (baseline, its PE twin)
FAMILIES = {"vit": ("vit_mini", "vit_pe_mini"), "resnet": ("resnet_mini", "resnet_mini_pe")}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def baseline(request, tmp_path_factory, fashion_mnist):
    """A baseline trained for two epochs on the small Fashion-MNIST folder, and its twin's name."""
    model, twin = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(model)
    return train_on_fashion_mnist(folder, model, fashion_mnist, epochs=2, ema=0.0), twin


def convert(run, twin, out, *args):
    result = run_pe("convert", run, "--to", twin, "--out", out, *args)
    return result, json.loads((out / "convert.json").read_text())


def best_weights(run):
    return load_tensors(run / "checkpoints" / "best" / "model.safetensors")


def validation_images(run, transform):
    """The run's validation images (its recipe's `data.root`), transformed, and their labels."""
    root = pathlib.Path(tomllib.loads((run / "config.toml").read_text())["data"]["root"])
    images, labels = [], []
    for label, folder in enumerate(sorted((root / "val").iterdir())):
        for image in sorted(folder.iterdir()):
            images.append(transform(Image.open(image)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def relative_error(matrix, tied):
    return float((matrix - tied).norm() / matrix.norm())


def naive_ties(state):
    """{PE tensor: [the baseline matrices it replaces, as [out, in] matrices]}, from the paper's
    definitions: ViT blocks and ResNet stages by their tensor names."""
    ties = {}
    for name, tensor in state.items():
        if name.endswith("attn.qkv.weight"):
            p = name.removesuffix(".qkv.weight")
            q, k, v = tensor.chunk(3)
            ties[f"{p}.wq"] = [q, state[f"{p}.proj.weight"].T]
            ties[f"{p}.wkv"] = [k, v.T]
        elif name.endswith("mlp.fc1.weight"):
            p = name.removesuffix(".fc1.weight")
            ties[f"{p}.weight"] = [tensor, state[f"{p}.fc2.weight"].T]
        elif name.endswith(".conv3.weight"):
            stage, block = name.split(".")[:2]
            members = ties.setdefault(f"{stage}.shared_w", [])
            has_projection = f"{stage}.{block}.downsample.0.weight" in state
            if not (block == "0" and has_projection):
                members.append(state[f"{stage}.{block}.conv1.weight"].flatten(1))
            members.append(tensor.flatten(1).T)
    return ties


def test_naive_is_the_mean_of_the_matrices_each_tie_replaces(baseline, tmp_path):
    run, twin = baseline
    _, report = convert(run, twin, tmp_path, "--method", "naive", "--images", "0", "--recompute-bn", "0")
    state, converted = best_weights(run), load_tensors(tmp_path / "model.safetensors")
    ties = naive_ties(state)
    assert ties and all(len(members) >= 2 for members in ties.values())
    for name, members in ties.items():
        expected = torch.stack(members).mean(0)
        assert max_abs_diff(converted[name].reshape(expected.shape), expected) <= 1e-6, name
    # Each replaced matrix is reported once with its error against the tie.
    reported = {}
    for tie in report["tied"]:
        reported.setdefault(tie["tied"], []).append(tie)
    assert reported.keys() == ties.keys()
    for name, members in ties.items():
        tied = torch.stack(members).mean(0)
        errors = sorted(relative_error(m, tied) for m in members)
        assert sorted(t["error"] for t in reported[name]) == pytest.approx(errors, rel=1e-4), name
        assert all(t["error"] == t["naive_error"] for t in reported[name])
    # Everything the tie does not touch (norms, biases, embeddings, the head) is the baseline's;
    # BatchNorm statistics too, as they were not measured again.
    for name, tensor in converted.items():
        if name in state:
            assert torch.equal(tensor, state[name]), name


def test_symmetric_ties_closer_and_the_package_reproduces_the_reported_logits(baseline, tmp_path):
    run, twin = baseline
    result, report = convert(run, twin, tmp_path, "--images", "1000")
    # The fit brings each tie's matrices together as a whole (one replaced matrix may move away).
    per_tie = {}
    for t in report["tied"]:
        per_tie.setdefault(t["tied"], []).append((t["error"], t["naive_error"]))
    for name, errors in per_tie.items():
        error, naive = (sum(e) / len(errors) for e in zip(*errors))
        assert error <= naive + 0.01, name
    assert sum(t["error"] for t in report["tied"]) < 0.9 * sum(t["naive_error"] for t in report["tied"])
    assert f'[model] init = "{tmp_path / "model.safetensors"}"' in result.stdout

    base = pe_models.load(run)
    converted = pe_models.create_model(twin, num_classes=10, pretrained=tmp_path / "model.safetensors").eval()
    x, labels = validation_images(run, base.preprocessing.transform())
    with torch.no_grad():
        z, z_twin = base(x), converted(x)
    logits = report["logits"]
    assert logits["images"] == len(labels)
    # JPEG decoders and resizers differ by a grey level here and there: within one image.
    one = 100.0 / len(labels) + 1e-9
    top1 = lambda out: 100.0 * float((out.argmax(1) == labels).double().mean())  # noqa: E731
    assert abs(logits["baseline_top1"] - top1(z)) <= one
    assert abs(logits["converted_top1"] - top1(z_twin)) <= one
    agreement = 100.0 * float((z_twin.argmax(1) == z.argmax(1)).double().mean())
    assert abs(logits["agreement"] - agreement) <= one
    change = float((z_twin - z).norm() / z.norm())
    assert logits["relative_change"] == pytest.approx(change, rel=0.05)
    # The symmetry moves alone keep the function: exactly for ReLU ResNets, closely for GELU MLPs.
    assert logits["aligned_relative_change"] < (1e-5 if twin.startswith("resnet") else 0.1 * change)


def test_model_init_starts_a_run_from_the_converted_weights(baseline, tmp_path, fashion_mnist):
    run, twin = baseline
    convert(run, twin, tmp_path / "twin", "--images", "0")
    weights = tmp_path / "twin" / "model.safetensors"
    # A learning rate of 1e-30 makes the one step a run takes before its checkpoint leave the
    # weights as they were loaded.
    recipe = tmp_path / "finetune.toml"
    recipe.write_text(FASHION_MNIST_RECIPE.format(model=twin, data=fashion_mnist, runs=tmp_path / "runs", epochs=1,
                                                  ema=0.0, extra="[optimizer]\nlr = 1e-30\nweight_decay = 0.0\n"))
    result = run_pe("train", recipe, "--set", f'model.init="{weights}"', "--set", "train.max_steps=1")
    assert f"model.init: starting from {weights}" in result.stdout
    started = load_tensors(tmp_path / "runs" / "finetune" / "checkpoints" / "last" / "model.safetensors")
    converted = load_tensors(weights)
    assert started.keys() == converted.keys()
    for name, tensor in converted.items():
        # One train-mode step moves BatchNorm statistics whatever the learning rate.
        if "running_" not in name and "num_batches" not in name:
            assert max_abs_diff(started[name], tensor) <= 1e-6, name
