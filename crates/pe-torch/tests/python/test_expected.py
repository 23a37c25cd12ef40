"""The values pe-torch's Rust tests assert against (tests/data/expected.json) are PyTorch's.

Also checks, on the PyTorch side, the claim the Rust fused optimizers rely on: torch's fused
AdamW/SGD kernels agree with the single-tensor implementation within 1e-6 on these inputs.
"""

import json
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gen_expected  # noqa: E402

EXPECTED = json.loads(gen_expected.OUT.read_text())


@pytest.fixture(scope="module")
def computed():
    return gen_expected.compute()


def test_inputs_and_scaler_sequence_unchanged(computed):
    assert computed["init"] == EXPECTED["init"]
    assert computed["grads"] == EXPECTED["grads"]
    assert computed["scaler"] == EXPECTED["scaler"]


@pytest.mark.parametrize("name", sorted(EXPECTED["final"]))
def test_final_parameters_match_torch_optim(computed, name):
    for k, v in EXPECTED["final"][name].items():
        torch.testing.assert_close(torch.tensor(computed["final"][name][k]), torch.tensor(v), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", sorted(EXPECTED["final"]))
def test_torch_fused_kernels_match_single_tensor(name):
    init, grads = gen_expected.inputs()
    make, base_lr = gen_expected.scenarios(fused=True)[name]
    fused = gen_expected.run(make, base_lr, init, grads)
    for k, v in EXPECTED["final"][name].items():
        torch.testing.assert_close(fused[k].reshape(-1), torch.tensor(v), rtol=0, atol=1e-6)


def test_scaler_pattern_is_pytorch_documented_behaviour():
    # Hand-derived: growth_interval=3, backoff 0.5, growth 2.0 from 2**16.
    scales = [s["scale"] for s in EXPECTED["scaler"]]
    assert scales == [65536.0, 65536.0, 32768.0, 32768.0, 32768.0, 65536.0, 65536.0, 32768.0, 16384.0,
                      16384.0, 16384.0, 32768.0, 32768.0]
