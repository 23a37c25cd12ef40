"""The `pe_models` package (python/pe_models, product code) against the `pe` binary, against the
independent reference of the paper's equations (pe_reference.py), and against torchvision/timm.

Weights go both ways by name: `pe forward --save-weights` files load strictly into the package's
models, and the package's weights (with non-trivial norms) run in `pe forward`, which must give the
same logits. A short training run checks `pe_models.load` on a real run folder.
"""

import json
import pathlib
import shutil
import tomllib

import pytest
import torch

from conftest import (
    ROOT, calibrate_batch_norms, load_tensors, make_image_folder, max_abs_diff, max_rel_diff, randomize_norms, run_pe,
    rust_forward, save_tensors,
)
from pe_reference import ResNetPe, VitPe

try:
    import pe_models
except ImportError as error:
    raise ImportError("pe_models is not installed in this venv: `make setup` installs it "
                      "(pip install -e python/pe_models)") from error

PACKAGE_SRC = (ROOT / "python" / "pe_models" / "src").resolve()
if not pathlib.Path(pe_models.__file__).resolve().is_relative_to(PACKAGE_SRC):
    raise ImportError(f"pe_models is imported from {pe_models.__file__}, not from this checkout's {PACKAGE_SRC}: "
                      "reinstall it with pip install -e python/pe_models")

# The registry's PE models and their parameter-matched baselines.
PE_AND_MATCHED = [
    "resnet50_pe", "resnet50_pe_stage34", "vit_pe_tiny", "vit_pe_small", "resnet_mini", "resnet_mini_pe",
    "vit_mini", "vit_pe_mini", "resnet50_matched", "vit_small_matched", "resnet_mini_matched", "vit_mini_matched",
    "vit_pe_small_distilled",
]
# Tensors whose gradients are compared; not k_bias: softmax makes its gradient exactly 0.
TIED = ("shared_w", "wq", "wkv", "weight", "q_bias", "v_bias", "proj_bias")


def side(config):
    """The input side to test at: a ViT's own; 64 px for ImageNet-stem ResNets (any size works)."""
    if isinstance(config, pe_models.VitConfig):
        return config.img_size
    return 64 if config.stem == "imagenet" else 28


def inputs(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_channels, side(config), side(config), generator=generator)


def with_random_norms(model, seed=0):
    """The model with non-trivial norm parameters and BN statistics, so eval mode tests them."""
    randomize_norms(model, torch.Generator().manual_seed(seed))
    return model


def tied_names(model):
    return [name for name, _ in model.named_parameters() if name.split(".")[-1] in TIED]


@pytest.mark.parametrize("name", PE_AND_MATCHED)
def test_pe_weights_load_strictly_and_give_pe_forwards_logits(name, tmp_path):
    run_pe("forward", "--model", name, "--seed", "1", "--save-weights", tmp_path / "rust.safetensors")
    model = pe_models.create_model(name, pretrained=tmp_path / "rust.safetensors").eval()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in load_tensors(tmp_path / "rust.safetensors").items())
    x = inputs(model.config, batch=1 if side(model.config) == 224 else 2)
    calibrate_batch_norms(with_random_norms(model), inputs(model.config, batch=2, seed=1))
    save_tensors(tmp_path / "ours.safetensors", model.state_dict())
    logits, _ = rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "ours.safetensors")
    with torch.no_grad():
        assert max_abs_diff(logits, model(x)) <= 1e-4


@pytest.mark.parametrize("name", ["resnet_mini_pe", "vit_pe_mini"])
def test_training_mode_logits_and_tied_gradients_match_pe(name, tmp_path):
    model = with_random_norms(pe_models.create_model(name))
    save_tensors(tmp_path / "ours.safetensors", model.state_dict())
    x = inputs(model.config, batch=4)
    grad_output = torch.randn(4, model.num_classes, generator=torch.Generator().manual_seed(1))
    tied = tied_names(model)
    logits, grads = rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "ours.safetensors",
                                 train=True, grads=tied, grad_output=grad_output)
    expected = model.train()(x)
    assert max_abs_diff(logits, expected.detach()) <= 1e-4
    (expected * grad_output).sum().backward()
    params = dict(model.named_parameters())
    for name in tied:
        assert max_rel_diff(grads[name], params[name].grad) <= 1e-4, name


RESNET_PE = {
    "arch": "resnet", "block": "bottleneck", "layers": [2, 1, 3], "widths": [4, 8, 8], "stem": "small",
    "stem_channels": 8, "in_channels": 3, "num_classes": 5, "pe_stages": [1, 3],
}
REFERENCE_CASES = {
    "vit_pe_mini": ("vit_pe_mini", VitPe),
    "resnet_mini_pe": ("resnet_mini_pe", ResNetPe),
    "resnet50_pe_stage34": ("resnet50_pe_stage34", ResNetPe),
    "resnet_pe_standard_first": ({**RESNET_PE, "first_block": "standard", "layers": [2, 2, 3]}, ResNetPe),
    "resnet_pe_imagenet_stem": ({**RESNET_PE, "stem": "imagenet"}, ResNetPe),
}


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_the_package_agrees_with_the_independent_reference(case):
    spec, reference_class = REFERENCE_CASES[case]
    model = with_random_norms(pe_models.create_model(spec))
    reference = reference_class(model.config.to_dict())
    reference.load_state_dict(model.state_dict(), strict=True)
    x = inputs(model.config, batch=2)
    with torch.no_grad():
        assert max_abs_diff(model.eval()(x), reference.eval()(x)) <= 1e-4
    ours, theirs = model.train()(x), reference.train()(x)
    assert max_abs_diff(ours, theirs) <= 1e-4
    ours.square().sum().backward()
    theirs.square().sum().backward()
    params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if name.split(".")[-1] in TIED:
            assert max_rel_diff(param.grad, params[name].grad) <= 1e-4, name


def test_the_presets_are_the_rust_registrys(tmp_path):
    summary = json.loads(run_pe("summary", "--format", "json").stdout)
    assert [entry["model"] for entry in summary] == pe_models.list_models()
    for entry in summary:
        config = pe_models.preset(entry["model"])
        assert config.to_dict() == entry["config"], entry["model"]
        params = sum(p.numel() for p in pe_models.build(config).parameters())
        assert params == entry["params"], entry["model"]


def test_a_config_json_builds_the_model_pe_forward_builds(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(RESNET_PE))
    run_pe("forward", "--config", tmp_path / "model.json", "--save-weights", tmp_path / "rust.safetensors")
    model = pe_models.create_model(tmp_path / "model.json", pretrained=tmp_path / "rust.safetensors")
    assert model.config == pe_models.model_config(RESNET_PE)
    recipe_style = pe_models.model_config({"name": "vit_pe_mini", "drop_path_rate": 0.05})
    assert recipe_style == pe_models.preset("vit_pe_mini").replace(drop_path_rate=0.05)


@pytest.mark.parametrize("table, message", [
    ({**RESNET_PE, "widht": [1]}, "unknown field(s) ['widht']"),
    ({k: v for k, v in RESNET_PE.items() if k != "stem"}, "missing field(s) ['stem']"),
    ({**RESNET_PE, "stem_channels": 8.0}, "`stem_channels`: expected int"),
    ({**RESNET_PE, "first_block": "first"}, "`first_block`: expected 'projection' or 'standard'"),
    ({**RESNET_PE, "block": "basic"}, 'pe_stages need block = "bottleneck"'),
    ({**RESNET_PE, "arch": "vgg"}, "`arch` must be one of ['resnet', 'vit']"),
    ({"name": "vit_pe_large"}, "unknown model 'vit_pe_large'; registered: resnet18"),
])
def test_configs_are_read_as_strictly_as_the_rust_side(table, message):
    with pytest.raises(pe_models.ConfigError) as error:
        pe_models.model_config(table)
    assert message in str(error.value)


# --- strict loading ------------------------------------------------------------------------------


@pytest.fixture
def vit_weights(tmp_path):
    model = pe_models.create_model("vit_pe_mini")
    return model, {k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"


def strict_error(state, path, **kwargs):
    save_tensors(path, state)
    with pytest.raises(pe_models.StrictLoadError) as error:
        pe_models.create_model("vit_pe_mini", pretrained=path, **kwargs)
    return error.value


def test_a_missing_tensor_is_an_error_that_names_it(vit_weights):
    _, state, path = vit_weights
    del state["blocks.2.attn.wkv"]
    error = strict_error(state, path)
    assert error.missing == ["blocks.2.attn.wkv"] and not error.unexpected and not error.mismatched
    assert "missing: blocks.2.attn.wkv" in str(error)


def test_an_unexpected_tensor_is_an_error_that_names_it(vit_weights):
    _, state, path = vit_weights
    state["blocks.0.attn.qkv.weight"] = torch.zeros(288, 96)
    error = strict_error(state, path)
    assert error.unexpected == ["blocks.0.attn.qkv.weight"] and not error.missing
    assert "unexpected: blocks.0.attn.qkv.weight" in str(error)


def test_a_wrong_shape_is_an_error_that_names_both_shapes(vit_weights):
    _, state, path = vit_weights
    state["blocks.1.mlp.weight"] = state["blocks.1.mlp.weight"].t().contiguous()
    error = strict_error(state, path)
    assert "wrong shape: blocks.1.mlp.weight [96, 384] vs model [384, 96]" in str(error)
    assert "the weights are of another architecture" in str(error)


def test_errors_group_names_that_differ_by_block_index(vit_weights):
    _, state, path = vit_weights
    for block in range(4):
        del state[f"blocks.{block}.attn.wq"]
    assert "missing: blocks.*.attn.wq ×4" in str(strict_error(state, path))


def test_a_head_for_other_classes_is_refused_unless_num_classes_asks_for_a_new_one(vit_weights):
    _, state, path = vit_weights
    state["head.weight"], state["head.bias"] = torch.randn(3, 96), torch.randn(3)
    error = strict_error(state, path)
    assert "only the classifier (head) differs: pass num_classes" in str(error)
    model = pe_models.create_model("vit_pe_mini", pretrained=path, num_classes=7)
    assert model.head.weight.shape == (7, 96)
    assert max_abs_diff(model.state_dict()["blocks.3.mlp.weight"], state["blocks.3.mlp.weight"]) == 0
    # Other mismatches stay errors with num_classes too.
    del state["pos_embed"]
    assert strict_error(state, path, num_classes=7).missing == ["pos_embed"]


def test_batch_norm_counters_may_be_absent_as_on_the_rust_side(tmp_path):
    state = with_random_norms(pe_models.create_model("resnet_mini_pe")).state_dict()
    save_tensors(tmp_path / "w.safetensors", {k: v for k, v in state.items() if "num_batches_tracked" not in k})
    model = pe_models.create_model("resnet_mini_pe", pretrained=tmp_path / "w.safetensors")
    assert max_abs_diff(model.state_dict()["layer2.1.bn3.running_var"], state["layer2.1.bn3.running_var"]) == 0


# --- baselines -----------------------------------------------------------------------------------


def test_the_baselines_are_torchvisions_and_timms():
    import timm
    import torchvision

    for ours, theirs in [(pe_models.create_model("resnet18"), torchvision.models.resnet18()),
                         (pe_models.create_model("deit_tiny"), timm.create_model("deit_tiny_patch16_224"))]:
        theirs.load_state_dict(with_random_norms(ours).state_dict(), strict=True)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = inputs(ours.config, batch=1)
        with torch.no_grad():
            assert max_abs_diff(ours.eval()(x), theirs.eval()(x)) <= 1e-4


# --- run folders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A few steps of the Fashion-MNIST ResNet-PE recipe on 3 generated classes, with EMA."""
    root = tmp_path_factory.mktemp("run")
    make_image_folder(root / "data", classes=3, per_class=8, val_per_class=4)
    sets = {
        "data.root": root / "data", "logging.runs_dir": root / "runs", "model.num_classes": 3,
        "train.epochs": 1, "train.batch_size": 8, "eval.batch_size": 8, "train.ema_decay": 0.5,
        "data.workers": 1, "logging.sample_images": 0, "logging.progress": "false",
        "data.interpolation": "bicubic", "data.crop_pct": 0.9,
    }
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    run_pe("train", ROOT / "experiments" / "fmnist_resnet_mini_pe.toml", "--name", "pe_models", *args)
    return root / "runs" / "pe_models"


def test_load_reproduces_pe_forward_on_a_trained_run(run_dir, tmp_path):
    model = pe_models.load(run_dir)
    assert not model.training
    last = run_dir / "checkpoints" / "last" / "model.safetensors"
    best = (run_dir / "checkpoints" / "best").resolve()
    assert pathlib.Path(model.pretrained_cfg["file"]) == best / "model.safetensors"
    # The recorded architecture, read here independently of the package.
    recorded = tomllib.loads((run_dir / "config.toml").read_text())
    (tmp_path / "model.json").write_text(json.dumps(recorded["model"]))
    x = inputs(model.config, batch=4)
    logits, _ = rust_forward(tmp_path, ["--config", tmp_path / "model.json"], x, weights=last)
    with torch.no_grad():
        assert max_abs_diff(logits, model(x)) <= 1e-4
    # Trained BatchNorm statistics, not the initial ones.
    assert model.layer1.transition[1].running_mean.abs().max() > 0


def test_a_run_carries_its_eval_preprocessing(run_dir):
    import timm.data

    model = pe_models.load(run_dir)
    assert model.preprocessing == pe_models.Preprocessing(
        input_size=(3, 28, 28), crop_pct=0.9, interpolation="bicubic",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert model.preprocessing.resize_size == 31
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 28, 28) and config["crop_pct"] == 0.9 and config["interpolation"] == "bicubic"
    from PIL import Image
    image = Image.new("L", (40, 30), color=128)
    assert model.preprocessing.transform()(image).shape == (3, 28, 28)


def test_checkpoint_folders_files_and_ema_resolve_as_the_runner_does(run_dir):
    checkpoint = (run_dir / "checkpoints" / "last").resolve()
    from_run, from_checkpoint = pe_models.load(run_dir), pe_models.load(checkpoint)
    for name, tensor in load_tensors(checkpoint / "model.safetensors").items():
        assert max_abs_diff(from_run.state_dict()[name], tensor) == 0, name
        assert max_abs_diff(from_checkpoint.state_dict()[name], tensor) == 0, name
    ema = pe_models.load(run_dir, ema=True)
    ema_file = load_tensors(checkpoint / "ema.safetensors")
    assert max_abs_diff(ema.state_dict()["layer2.shared_w"], ema_file["layer2.shared_w"]) == 0
    assert max_abs_diff(ema_file["layer2.shared_w"], from_run.state_dict()["layer2.shared_w"]) > 0
    # A bare file records no architecture and has no EMA.
    with pytest.raises(pe_models.ConfigError, match="records no architecture"):
        pe_models.load(checkpoint / "model.safetensors")
    with pytest.raises(pe_models.CheckpointError, match="a single file has no EMA"):
        pe_models.load(checkpoint / "model.safetensors", ema=True)
    with pytest.raises(pe_models.StrictLoadError):  # the preset has 10 classes, the run 3
        pe_models.load(checkpoint / "model.safetensors", model="resnet_mini_pe")
    from_file = pe_models.load(checkpoint / "model.safetensors", model={"name": "resnet_mini_pe", "num_classes": 3})
    assert max_abs_diff(from_file.fc.weight, from_run.fc.weight) == 0


def test_a_damaged_checkpoint_file_is_refused(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    weights = (copy / "checkpoints" / "last").resolve() / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(pe_models.CheckpointError, match="does not match the content hash"):
        pe_models.load(copy)


def toml_table(name, table):
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def test_a_run_folder_means_its_best_checkpoint_else_its_last(tmp_path):
    run = tmp_path / "run"
    config = pe_models.preset("vit_pe_mini")
    (run / "checkpoints").mkdir(parents=True)
    # No identity.json: the architecture comes from the run folder's config.toml.
    (run / "config.toml").write_text(toml_table("model", config.to_dict()))
    for step in (1, 2):
        folder = run / "checkpoints" / f"step-{step:09}"
        folder.mkdir()
        torch.manual_seed(step)
        save_tensors(folder / "model.safetensors", pe_models.build(config).state_dict())
        (folder / "state.json").write_text(json.dumps({"step": step}))  # from before hashes were recorded
    stored = lambda step: load_tensors(run / "checkpoints" / f"step-{step:09}" / "model.safetensors")  # noqa: E731
    (run / "checkpoints" / "best").symlink_to("step-000000001")
    (run / "checkpoints" / "last").symlink_to("step-000000002")
    assert max_abs_diff(pe_models.load(run).pos_embed, stored(1)["pos_embed"]) == 0
    (run / "checkpoints" / "best").unlink()
    assert max_abs_diff(pe_models.load(run).pos_embed, stored(2)["pos_embed"]) == 0
    with pytest.raises(pe_models.CheckpointError, match="no ema.safetensors"):
        pe_models.load(run, ema=True)
    (run / "checkpoints" / "last").unlink()
    with pytest.raises(pe_models.CheckpointError, match="no best or last checkpoint"):
        pe_models.load(run)
    with pytest.raises(pe_models.CheckpointError, match="neither a run folder"):
        pe_models.load(tmp_path)


# --- timm ----------------------------------------------------------------------------------------


def test_timm_creates_the_registry_models_and_loads_runs(run_dir, tmp_path):
    import timm

    assert sorted(timm.list_models("pe_*")) == sorted(f"pe_{name}" for name in pe_models.list_models())
    model = timm.create_model("pe_resnet_mini_pe", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(run_dir))).eval()
    reference = pe_models.load(run_dir)
    x = inputs(reference.config)
    file = (run_dir / "checkpoints" / "last").resolve() / "model.safetensors"
    from_file = timm.create_model("pe_resnet_mini_pe", num_classes=3, checkpoint_path=str(file)).eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) == 0
        assert max_abs_diff(from_file(x), reference(x)) == 0
    assert timm.create_model("pe_vit_pe_mini", in_chans=1, drop_path_rate=0.1).config.in_channels == 1
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("pe_vit_pe_small", pretrained=True)
