"""Baselines against the real references: torchvision ResNets and timm DeiTs.

Weights go both ways through safetensors files with the references' own state-dict names;
logits (eval) and gradients (train) must agree.
"""

import pytest
import timm
import torch
import torchvision

from conftest import load_tensors, max_abs_diff, max_rel_diff, randomize_norms, rust_forward, save_tensors

REFERENCES = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "deit_tiny": lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False),
    "deit_small": lambda: timm.create_model("deit_small_patch16_224", pretrained=False),
    "deit_tiny_distilled": lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False),
    "deit_small_distilled": lambda: timm.create_model("deit_small_distilled_patch16_224", pretrained=False),
}

GRAD_PARAMS = {
    "resnet18": ["conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.weight", "fc.weight"],
    "resnet50": ["conv1.weight", "layer1.0.conv1.weight", "layer3.5.conv3.weight", "layer4.2.bn3.bias", "fc.bias"],
    "deit_tiny": ["patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "blocks.11.attn.qkv.weight",
                  "blocks.11.attn.qkv.bias", "blocks.11.mlp.fc2.weight", "head.weight"],
    "deit_small": ["patch_embed.proj.weight", "blocks.5.attn.proj.weight", "blocks.11.norm2.weight", "norm.bias", "head.bias"],
    "deit_tiny_distilled": ["pos_embed", "cls_token", "dist_token", "blocks.11.attn.qkv.weight", "head.weight", "head_dist.bias"],
    "deit_small_distilled": ["dist_token", "blocks.11.mlp.fc1.weight", "norm.weight", "head_dist.weight", "head.bias"],
}


def reference(name, seed=0):
    torch.manual_seed(seed)
    model = REFERENCES[name]()
    randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model


def inputs(seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 224, 224, generator=generator), torch.randn(2, 1000, generator=generator)


@pytest.mark.parametrize("name", REFERENCES)
def test_pytorch_weights_give_the_same_eval_logits_in_rust(name, tmp_path):
    model = reference(name).eval()
    save_tensors(tmp_path / "torch.safetensors", model.state_dict())
    x, _ = inputs()
    with torch.no_grad():
        expected = model(x)
    logits, _ = rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "torch.safetensors")
    assert max_abs_diff(logits, expected) <= 1e-4


@pytest.mark.parametrize("name", REFERENCES)
def test_rust_weights_load_strictly_into_the_reference(name, tmp_path):
    x, _ = inputs()
    logits, _ = rust_forward(tmp_path, ["--model", name], x, save_weights=tmp_path / "ours.safetensors")
    model = REFERENCES[name]()
    model.load_state_dict(load_tensors(tmp_path / "ours.safetensors"), strict=True)
    with torch.no_grad():
        expected = model.eval()(x)
    assert max_abs_diff(logits, expected) <= 1e-4


def assert_training_gradients_agree(name, x, grad_output, compared, tmp_path):
    """Train-mode logits and the `compared` gradients of Rust and the reference, on the same weights."""
    model = reference(name).train()
    save_tensors(tmp_path / "torch.safetensors", model.state_dict())
    logits_ref = model(x)
    (logits_ref * grad_output).sum().backward()
    params = dict(model.named_parameters())
    logits, grads = rust_forward(
        tmp_path,
        ["--model", name],
        x,
        weights=tmp_path / "torch.safetensors",
        train=True,
        grads=compared,
        grad_output=grad_output,
    )
    assert max_rel_diff(logits, logits_ref.detach()) <= 1e-4
    for param in compared:
        assert max_rel_diff(grads[param], params[param].grad) <= 1e-4, param


@pytest.mark.parametrize("name", REFERENCES)
def test_training_mode_gradients_agree(name, tmp_path):
    x, grad_output = inputs()
    assert_training_gradients_agree(name, x, grad_output, GRAD_PARAMS[name], tmp_path)


@pytest.mark.parametrize("name", ["deit_tiny_distilled", "deit_small_distilled"])
def test_both_heads_of_a_distilled_deit_equal_timms(name, tmp_path):
    """The class head and the distillation head apart (what training with a teacher reads), not
    only their mean: timm's `head` on token 0 and `head_dist` on token 1."""
    model = reference(name).eval()
    save_tensors(tmp_path / "torch.safetensors", model.state_dict())
    x, _ = inputs()
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = {"class": model.head(tokens[:, 0]), "dist": model.head_dist(tokens[:, 1])}
    rust_forward(tmp_path, ["--model", name], x, weights=tmp_path / "torch.safetensors")
    out = load_tensors(tmp_path / "out.safetensors")
    for head, logits in expected.items():
        assert max_abs_diff(out[f"heads.{head}"], logits) <= 1e-4, head
    # The heads differ, so the comparison above tells them apart.
    assert max_abs_diff(expected["class"], expected["dist"]) > 1e-2


def test_resnet50_on_32px_images_where_the_last_stages_run_as_gemms(tmp_path):
    """At 32 px stage 3 sees 2×2 maps and stage 4 1×1 maps, where the Rust ResNet runs 1×1 convs
    (strided shortcuts included) and 3×3 convs over 1×1 maps as matrix products: they must still
    match torchvision's convolutions, gradients included.

    BN over 1×1 maps of 16 images normalises 16 values and amplifies any change of rounding order:
    PyTorch's own fp32 gradients are 1-3 % from its float64 ones, by how much depends on the CPU's
    kernels (MKL on an AMD EPYC: 2.4 %). So the gradients are judged against float64: Rust's must be
    no further from them than PyTorch's fp32 ones (×2, + 1e-4). A wrong kernel is off by O(1)."""
    generator = torch.Generator().manual_seed(4)
    x, grad_output = torch.randn(16, 3, 32, 32, generator=generator), torch.randn(16, 1000, generator=generator)
    compared = ["layer3.1.conv1.weight", "layer3.1.conv3.weight", "layer4.0.downsample.0.weight",
                "layer4.0.conv2.weight", "layer4.1.conv2.weight", "layer4.2.conv3.weight", "layer4.2.bn2.weight"]
    model, exact = reference("resnet50").train(), reference("resnet50").train().double()
    save_tensors(tmp_path / "torch.safetensors", model.state_dict())
    logits_ref = model(x)
    (logits_ref * grad_output).sum().backward()
    (exact(x.double()) * grad_output.double()).sum().backward()
    logits, grads = rust_forward(tmp_path, ["--model", "resnet50"], x, weights=tmp_path / "torch.safetensors",
                                 train=True, grads=compared, grad_output=grad_output)
    assert max_rel_diff(logits, logits_ref.detach()) <= 1e-4
    fp32, f64 = dict(model.named_parameters()), dict(exact.named_parameters())
    for param in compared:
        pytorch_error = max_rel_diff(fp32[param].grad, f64[param].grad)
        assert max_rel_diff(grads[param], f64[param].grad) <= 2 * pytorch_error + 1e-4, param


def test_a_missing_tensor_is_a_clear_error(tmp_path):
    model = reference("resnet18")
    state = model.state_dict()
    del state["layer3.1.conv2.weight"]
    save_tensors(tmp_path / "broken.safetensors", state)
    import subprocess

    from conftest import PE

    result = subprocess.run(
        [PE, "forward", "--model", "resnet18", "--weights", str(tmp_path / "broken.safetensors")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "missing: layer3.1.conv2.weight" in result.stderr
