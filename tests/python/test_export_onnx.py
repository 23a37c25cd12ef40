"""ONNX export (`python -m pe_models.export`) checked in the consumer: onnxruntime on the CPU must
give `pe forward`'s logits (≤ 1e-4) for every registry model on random inputs (224 px, the mini
models 28 px), with a dynamic or a fixed batch axis, at another ViT resolution, and on real
Fashion-MNIST images through a trained run and its sidecar's preprocessing.

Real images: conftest's `fashion_mnist`, 32 training and 4 validation JPEGs per class, so a
3-step run takes seconds (the full set's 10,000-image evaluation takes ~20 s a run).
"""

import json
import re
import subprocess
import sys
import tomllib

import pytest
import torch

from conftest import (
    ROOT, calibrate_batch_norms, load_tensors, max_abs_diff, randomize_norms, run_pe, rust_forward, save_tensors,
)

try:
    import onnx
    import onnxruntime
except ImportError as error:
    raise ImportError("onnx and onnxruntime are not installed in this venv: "
                      "pip install -r python/requirements.txt (or `make setup`)") from error

import pe_models
from pe_models.export import ExportError, export_onnx, verify_onnx
from pe_models.export import main as export_main

SIDECAR_KEYS = {"format", "file", "model", "classes", "input", "output", "preprocessing", "source"}
PREPROCESSING_KEYS = {"input_size", "resize_size", "crop_pct", "crop_mode", "interpolation", "mean", "std"}
INIT_KEYS = {"init", "init_exclude", "init_ema", "head_init_scale"}


def side(config):
    """The test resolution: a ViT's own; 224 px for ImageNet-stem ResNets, 28 for the small stem."""
    if isinstance(config, pe_models.VitConfig):
        return config.img_size
    return 224 if config.stem == "imagenet" else 28


def random_inputs(batch, size, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def onnxruntime_logits(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


def stored_elements(path):
    """How many numbers the ONNX file stores as weights (its initializers)."""
    return sum(int(torch.tensor(list(init.dims)).prod()) for init in onnx.load(str(path)).graph.initializer)


def test_the_sweep_covers_the_rust_registry():
    summary = json.loads(run_pe("summary", "--format", "json").stdout)
    assert [entry["model"] for entry in summary] == pe_models.list_models()


@pytest.mark.parametrize("name", pe_models.list_models())
def test_onnxruntime_reproduces_pe_forward_for_every_registry_model(name, tmp_path):
    run_pe("forward", "--model", name, "--seed", "1", "--save-weights", tmp_path / "rust.safetensors")
    model = pe_models.create_model(name, pretrained=tmp_path / "rust.safetensors")
    size = side(model.config)
    randomize_norms(model, torch.Generator().manual_seed(0))
    calibrate_batch_norms(model, random_inputs(2, size, seed=1))
    save_tensors(tmp_path / "ours.safetensors", model.state_dict())

    # verify=False: the consumer's check, against `pe forward`, is this test's own.
    info = export_onnx(tmp_path / "ours.safetensors", tmp_path / "m.onnx", model=name, verify=False,
                       log=lambda _: None)
    x = random_inputs(2, size)
    expected, _ = rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "ours.safetensors")
    assert max_abs_diff(onnxruntime_logits(tmp_path / "m.onnx", x), expected) <= 1e-4

    assert info == json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["model"] == pe_models.preset(name).to_dict() and info["classes"] is None
    assert info["input"]["shape"] == [None, 3, size, size] and info["output"]["shape"] == [None, model.num_classes]
    assert info["source"] == {"weights": str(tmp_path / "ours.safetensors"), "ema": False}
    # A tied W is stored once (its Wᵀ is a Transpose in the graph, not a second copy).
    tensors = sum(t.numel() for n, t in model.state_dict().items() if not n.endswith("num_batches_tracked"))
    assert stored_elements(tmp_path / "m.onnx") <= tensors


# The dynamo exporter (the alternative, slower: ~10 s a model here) on the ViT, whose attention is
# the harder graph.
@pytest.mark.parametrize("name, exporter", [
    ("vit_pe_mini", "torchscript"), ("resnet_mini_pe", "torchscript"), ("vit_pe_mini", "dynamo"),
])
@pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")  # torch.export's own, with dynamo
def test_a_dynamic_batch_axis_runs_other_batches(name, exporter, tmp_path):
    model = pe_models.create_model(name)
    randomize_norms(model, torch.Generator().manual_seed(0))
    calibrate_batch_norms(model, random_inputs(2, 28, seed=1))
    save_tensors(tmp_path / "w.safetensors", model.state_dict())
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model=name, exporter=exporter, log=lambda _: None)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, free axis
    assert stored_elements(tmp_path / "m.onnx") <= sum(t.numel() for t in model.state_dict().values())
    for batch in (1, 3):
        x = random_inputs(batch, 28, seed=batch)
        expected, _ = rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "w.safetensors")
        assert max_abs_diff(onnxruntime_logits(tmp_path / "m.onnx", x), expected) <= 1e-4


def test_a_fixed_batch_is_fixed_in_the_file_and_the_sidecar(tmp_path):
    save_tensors(tmp_path / "w.safetensors", pe_models.create_model("vit_pe_mini").state_dict())
    info = export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="vit_pe_mini", batch=4,
                       log=lambda _: None)
    assert info["input"]["shape"] == [4, 3, 28, 28] and info["output"]["shape"] == [4, 10]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 3, 28, 28]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(["logits"], {"input": random_inputs(3, 28).numpy()})


# Up- and down-sampling; antialiasing changes both (PyTorch's antialiased bicubic is PIL's, a = -0.5).
@pytest.mark.parametrize("size", [56, 16])
def test_img_size_resamples_a_vit_position_embedding_as_timm_does(size, tmp_path):
    from timm.layers import resample_abs_pos_embed

    run_pe("forward", "--model", "vit_mini", "--seed", "2", "--save-weights", tmp_path / "rust.safetensors")
    state = load_tensors(tmp_path / "rust.safetensors")
    # std ~1, as large as the patches, and logits ~10× larger: a wrong grid shows well above 1e-4.
    state["pos_embed"], state["head.weight"] = state["pos_embed"] * 50, state["head.weight"] * 10
    save_tensors(tmp_path / "w.safetensors", state)
    info = export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="vit_mini", img_size=size,
                       log=lambda _: None)
    state = load_tensors(tmp_path / "w.safetensors")
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [size // 4] * 2, old_size=[7, 7],
                                                num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    save_tensors(tmp_path / "resampled.safetensors", state)
    config = {**pe_models.preset("vit_mini").to_dict(), "img_size": size}
    (tmp_path / "model.json").write_text(json.dumps(config))
    x = random_inputs(2, size)
    expected, _ = rust_forward(tmp_path, ["--config", tmp_path / "model.json"], x,
                               weights=tmp_path / "resampled.safetensors")
    assert max_abs_diff(onnxruntime_logits(tmp_path / "m.onnx", x), expected) <= 1e-4
    assert info["model"] == config and info["input"]["shape"] == [None, 3, size, size]
    # A bare file has no recipe: the Rust defaults (crop 0.875) at the new size.
    assert info["preprocessing"]["input_size"] == [3, size, size]
    assert info["preprocessing"]["resize_size"] == int(size / 0.875)


def test_a_resnet_exports_at_any_size(tmp_path):
    run_pe("forward", "--model", "resnet_mini_pe", "--save-weights", tmp_path / "w.safetensors")
    info = export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="resnet_mini_pe", img_size=40,
                       log=lambda _: None)
    x = random_inputs(2, 40)
    expected, _ = rust_forward(tmp_path, ["--model", "resnet_mini_pe"], x, weights=tmp_path / "w.safetensors")
    assert max_abs_diff(onnxruntime_logits(tmp_path / "m.onnx", x), expected) <= 1e-4
    assert info["input"]["shape"] == [None, 3, 40, 40] and info["preprocessing"]["resize_size"] == 45


def test_the_export_refuses_a_file_onnxruntime_does_not_reproduce(tmp_path, monkeypatch):
    import copy

    import pe_models.export as export

    model = pe_models.create_model("vit_pe_mini").eval()
    save_tensors(tmp_path / "w.safetensors", model.state_dict())
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="vit_pe_mini", log=lambda _: None)
    with torch.no_grad():
        model.blocks[0].attn.wq.copy_(model.blocks[0].attn.wq.t().clone())  # the transpose the tie must not lose
    with pytest.raises(ExportError, match="differ from PyTorch's by up to"):
        verify_onnx(tmp_path / "m.onnx", model, random_inputs(2, 28))

    # An exporter that writes another graph than the model's: export_onnx fails and leaves no file.
    def wrong_graph(net, *args, **kwargs):
        net = copy.deepcopy(net)
        with torch.no_grad():
            net.blocks[1].mlp.weight.mul_(1.01)
        real_export(net, *args, **kwargs)

    real_export = export._export
    monkeypatch.setattr(export, "_export", wrong_graph)
    with pytest.raises(ExportError, match="the file was removed"):
        export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="vit_pe_mini", log=lambda _: None)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.onnx.json").exists()


def test_the_self_check_is_relative_on_large_logits(tmp_path):
    """Fresh random ResNet50-PE weights (as `pe forward --save-weights` writes them) give logits of
    ~1e9, where fp32 rounding alone is ~1e2: the check is relative there, as `pe export`'s."""
    run_pe("forward", "--model", "resnet50_pe", "--save-weights", tmp_path / "w.safetensors")
    lines = []
    export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="resnet50_pe", img_size=64, log=lines.append)
    difference, allowed = map(float, re.search(r"= (\S+) \(allowed (\S+)\)", lines[0]).groups())
    assert 1e-4 < difference <= allowed
    with pytest.raises(ExportError, match="the file was removed"):
        export_onnx(tmp_path / "w.safetensors", tmp_path / "m.onnx", model="resnet50_pe", img_size=64,
                    atol=difference / allowed * 1e-4 / 2, log=lines.append)


# --- real Fashion-MNIST images through a trained run -----------------------------------------------


RECIPES = {
    "fmnist_vit_pe_mini": {"data.interpolation": "bicubic", "data.crop_pct": 0.875},
    "fmnist_resnet_mini_pe": {"train.ema_decay": 0.5},
}
#: floor(28 / crop_pct): the shorter side before the centre crop.
EXPECTED_RESIZE = {"fmnist_vit_pe_mini": 32, "fmnist_resnet_mini_pe": 28}


def sidecar_transform(pre):
    """The eval preprocessing a consumer builds from the sidecar alone (torchvision on PIL images)."""
    from torchvision import transforms as T

    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[pre["interpolation"]]
    assert pre["crop_mode"] == "center"
    return T.Compose([lambda image: image.convert("RGB"), T.Resize(pre["resize_size"], interpolation=mode),
                      T.CenterCrop(pre["input_size"][1:]), T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])


@pytest.mark.parametrize("recipe", RECIPES)
def test_onnxruntime_reproduces_pe_forward_on_real_images_of_a_trained_run(recipe, fashion_mnist, tmp_path, capsys):
    from PIL import Image

    sets = {"train.max_steps": 3, "logging.runs_dir": tmp_path / "runs", "data.root": fashion_mnist, "train.batch_size": 32,
            "data.workers": 1, "logging.sample_images": 0, "logging.progress": "false", **RECIPES[recipe]}
    run_pe("train", ROOT / "experiments" / f"{recipe}.toml", "--name", recipe,
           *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")])
    run = tmp_path / "runs" / recipe
    ema = "train.ema_decay" in RECIPES[recipe]
    args = [run, "--out", tmp_path / "out" / "m.onnx", *(["--ema"] if ema else [])]
    if recipe == "fmnist_vit_pe_mini":  # the command line itself, once
        result = subprocess.run([sys.executable, "-m", "pe_models.export", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        out = result.stdout
    else:
        assert export_main(list(map(str, args))) == 0
        out = capsys.readouterr().out
    assert "verified with onnxruntime (CPU): max |logits - PyTorch| = " in out
    info = json.loads((tmp_path / "out" / "m.onnx.json").read_text())

    # The sidecar, against the run's own records read here independently of the package.
    last = (run / "checkpoints" / "last").resolve()
    identity = json.loads((last / "identity.json").read_text())
    recorded = tomllib.loads(identity["config"])
    model = {k: v for k, v in recorded["model"].items() if k not in INIT_KEYS}
    assert set(info) == SIDECAR_KEYS and set(info["preprocessing"]) == PREPROCESSING_KEYS
    assert info["format"] == "onnx" and info["file"] == "m.onnx" and info["model"] == model
    assert info["classes"] == identity["dataset"]["classes"] and len(info["classes"]) == 10
    assert info["input"] == {"name": "input", "shape": [None, 3, 28, 28], "dtype": "float32", "layout": "NCHW",
                             "normalised": True}
    assert info["output"] == {"name": "logits", "shape": [None, 10]}
    weights = last / ("ema.safetensors" if ema else "model.safetensors")
    assert info["source"] == {"weights": str(weights), "ema": ema}
    data = recorded["data"]
    assert info["preprocessing"] == {
        "input_size": [3, 28, 28], "resize_size": EXPECTED_RESIZE[recipe], "crop_pct": data["crop_pct"],
        "crop_mode": "center", "interpolation": data["interpolation"], "mean": data["mean"], "std": data["std"],
    }
    assert (data["crop_pct"], data["interpolation"]) == {"fmnist_vit_pe_mini": (0.875, "bicubic"),
                                                         "fmnist_resnet_mini_pe": (1.0, "bilinear")}[recipe]

    # One validation JPEG of each class, preprocessed as the sidecar says.
    transform = sidecar_transform(info["preprocessing"])
    images = [sorted(folder.iterdir())[0] for folder in sorted((fashion_mnist / "val").iterdir())]
    x = torch.stack([transform(Image.open(path)) for path in images])
    (tmp_path / "model.json").write_text(json.dumps(model))
    expected, _ = rust_forward(tmp_path, ["--config", tmp_path / "model.json"], x, weights=weights)
    got = onnxruntime_logits(tmp_path / "out" / "m.onnx", x)
    assert max_abs_diff(got, expected) <= 1e-4
    assert expected.std(dim=0).max() > 1e-3  # the images give different logits: a real check


def test_the_cli_fails_loudly(tmp_path, capsys):
    save_tensors(tmp_path / "w.safetensors", pe_models.create_model("vit_pe_mini").state_dict())
    args = [str(tmp_path / "w.safetensors"), "--model", "vit_pe_mini", "--out", str(tmp_path / "m.onnx")]
    assert export_main([*args, "--img-size", "30"]) == 1
    assert "error: --img-size 30 is not a multiple of the ViT's patch size 4" in capsys.readouterr().err
    assert export_main([*args, "--ema"]) == 1
    assert "a single file has no EMA" in capsys.readouterr().err
    assert export_main([*args, "--opset", "21"]) == 1  # torch would only warn
    assert "the TorchScript exporter writes opsets up to 20, not 21" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.onnx.json").exists()
