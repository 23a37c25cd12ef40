"""The values pe-runner's parity tests assert against (tests/data/parity.json) are timm's and PyTorch's."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gen_parity  # noqa: E402


def test_committed_fixture_is_what_timm_and_torch_compute():
    assert json.loads(gen_parity.OUT.read_text()) == gen_parity.compute()

