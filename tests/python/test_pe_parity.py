"""PE models against an independent PyTorch implementation of the paper's equations
(pe_reference.py). Rust initialises and exports its weights; the reference loads them strictly by
name and must give the same logits (eval) and gradients (train).
"""

import json

import pytest
import torch

from conftest import load_tensors, max_abs_diff, max_rel_diff, rust_forward
from pe_reference import ResNetPe, VitPe


VIT_PE = {
    "arch": "vit", "img_size": 32, "patch_size": 8, "in_channels": 3, "num_classes": 7, "embed_dim": 48,
    "depth": 2, "heads": 3, "mlp_ratio": 4.0, "pe_attention": True, "pe_mlp": True,
}
RESNET_PE = {
    "arch": "resnet", "block": "bottleneck", "layers": [2, 1, 3], "widths": [4, 8, 8], "stem": "small",
    "stem_channels": 8, "in_channels": 3, "num_classes": 5, "pe_stages": [1, 3], "first_block": "projection",
}
CASES = {
    "vit_pe": (VIT_PE, VitPe),
    "resnet_pe_projection": (RESNET_PE, ResNetPe),
    "resnet_pe_standard_first": ({**RESNET_PE, "first_block": "standard", "layers": [2, 2, 3]}, ResNetPe),
    "resnet_pe_imagenet_stem": ({**RESNET_PE, "stem": "imagenet"}, ResNetPe),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_rust_pe_model_matches_the_papers_equations(case, train, tmp_path):
    config, reference_class = CASES[case]
    (tmp_path / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    grad_output = torch.randn(4, config["num_classes"], generator=generator)
    model = reference_class(config)
    # Not k_bias: it shifts all of a query's logits alike, so softmax makes its gradient exactly 0
    # and both sides' values are rounding noise.
    compared = ("shared_w", "wq", "wkv", "weight", "q_bias", "v_bias", "proj_bias")
    tied = [name for name, _ in model.named_parameters() if name.split(".")[-1] in compared]
    logits, grads = rust_forward(
        tmp_path,
        ["--config", tmp_path / "config.json", "--seed", "3"],
        x,
        save_weights=tmp_path / "ours.safetensors",
        train=train,
        grads=tied if train else (),
        grad_output=grad_output,
    )
    model.load_state_dict(load_tensors(tmp_path / "ours.safetensors"), strict=True)
    model.train(train)
    expected = model(x)
    assert max_abs_diff(logits, expected.detach()) <= 1e-4
    if train:
        (expected * grad_output).sum().backward()
        params = dict(model.named_parameters())
        for name in tied:
            assert max_rel_diff(grads[name], params[name].grad) <= 1e-4, name
