"""Strict loading of safetensors state dicts: every tensor the model has, with its shape, and
nothing else, as the Rust `pe_models::weights::load` requires; a mismatch lists all of it."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

#: BatchNorm's step counter: PyTorch's state dicts carry it, the Rust var stores do not need it,
#: so (as on the Rust side) a file may have it or not.
BN_COUNTER = "num_batches_tracked"


class StrictLoadError(ValueError):
    """Weights that do not fit the model; `missing`, `unexpected` and `mismatched` list why."""

    def __init__(self, source: Path, missing: list[str], unexpected: list[str], mismatched: list[str], hint: str):
        self.source, self.missing, self.unexpected, self.mismatched = source, missing, unexpected, mismatched
        lines = [f"weights {source} do not fit the model:"]
        for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if names:
                lines.append(f"  {what}: {', '.join(group_names(names))}")
        lines.append(f"  {hint}")
        super().__init__("\n".join(lines))


def group_names(names: Iterable[str]) -> list[str]:
    """Names whose numeric parts alone differ, counted as one (`blocks.*.attn.wq ×12`); sorted.
    A shape note after a space is kept: `layer2.*.conv1.weight [8, 4] vs model [8, 2] ×3`."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        head, _, note = name.partition(" ")
        pattern = re.sub(r"(?<![^.])\d+(?![^.])", "*", head)
        groups[f"{pattern} {note}" if note else pattern].append(name)
    return [one[0] if len(one) == 1 else f"{pattern} ×{len(one)}" for pattern, one in sorted(groups.items())]


def read(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, on the CPU."""
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    return load_file(str(path))


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: Path,
    may_miss: Callable[[str], bool] = lambda name: False,
) -> None:
    """Copies `state` into `model` once it fits: every tensor of the model present with its shape
    (except BN counters and names `may_miss` allows, which keep their values) and nothing else."""
    expected = model.state_dict()
    missing = [n for n in expected if n not in state and not n.endswith(BN_COUNTER) and not may_miss(n)]
    unexpected = [n for n in state if n not in expected]
    mismatched = [
        f"{n} {list(state[n].shape)} vs model {list(t.shape)}"
        for n, t in expected.items()
        if n in state and state[n].shape != t.shape
    ]
    if missing or unexpected or mismatched:
        raise StrictLoadError(source, missing, unexpected, mismatched, _hint(model, missing + unexpected + mismatched))
    # strict=False only lets the tolerated names (checked above) keep their values.
    model.load_state_dict(state, strict=False)


def _hint(model: nn.Module, problems: list[str]) -> str:
    head = next(name for name, module in model.named_modules() if module is model.get_classifier())
    if all(p.startswith(f"{head}.") for p in problems):
        return (f"only the classifier ({head}) differs: pass num_classes to create_model(..., pretrained=PATH) "
                "to start a fresh one")
    return "the weights are of another architecture"
