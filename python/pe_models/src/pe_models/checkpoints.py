"""What a path given to `load` / `pretrained=` stands for, resolved as the Rust runner resolves
`[model] init` (crates/pe-runner/src/train/init_weights.rs):

- a **run folder** (`runs/X`, with `checkpoints/`): its `best` checkpoint, else its `last`;
- a **checkpoint folder** (with `state.json`): its `model.safetensors`, or `ema.safetensors`;
- a **safetensors file**: itself (it has no EMA weights and records no architecture).

A checkpoint's file is checked against the content hash its `state.json` recorded, so a damaged
or replaced file is refused rather than loaded. The architecture and the data recipe come from the
checkpoint's `identity.json` (the resolved recipe it was trained with), else from the run folder's
`config.toml`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODEL = "model.safetensors"
EMA = "ema.safetensors"
STATE = "state.json"
IDENTITY = "identity.json"
RUN_CONFIG = "config.toml"


class CheckpointError(ValueError):
    """A path that does not name loadable weights, or a checkpoint file that fails its hash."""


@dataclass(frozen=True)
class Source:
    """Resolved weights: the file, and the recipe (a parsed `config.toml`) when one was recorded."""

    file: Path
    recipe: dict[str, Any] | None


def resolve(path: str | Path, ema: bool = False) -> Source:
    """The weights `path` stands for (see the module doc), verified against their recorded hash."""
    path = Path(path)
    fail = lambda reason: CheckpointError(f"{path}: {reason}")  # noqa: E731
    if path.is_file():
        if ema:
            raise fail("ema=True takes the EMA weights of a checkpoint (its ema.safetensors); a single file "
                       "has no EMA: name the checkpoint or run folder, or drop ema")
        return Source(path, None)
    if not path.is_dir():
        raise fail("no such file or folder (expected a run folder, a checkpoint folder or a .safetensors file)")
    if (path / STATE).is_file():
        checkpoint = path
    elif (path / "checkpoints").is_dir():
        checkpoint = _follow(path / "checkpoints" / "best") or _follow(path / "checkpoints" / "last")
        if checkpoint is None:
            raise fail("the run folder has no best or last checkpoint (has it trained an epoch?)")
    else:
        raise fail(f"a folder that is neither a run folder (with checkpoints/) nor a checkpoint folder (with {STATE})")
    name = EMA if ema else MODEL
    if not (checkpoint / name).is_file():
        why = " (the run trained with train.ema_decay = 0: no EMA weights)" if ema else ""
        raise fail(f"{checkpoint} has no {name}{why}")
    verify(checkpoint, name)
    return Source(checkpoint / name, recorded_recipe(checkpoint))


def _follow(link: Path) -> Path | None:
    """The folder `link` resolves to, if it resolves to one (a copied folder counts too)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return target if target.is_dir() else None


def verify(checkpoint: Path, name: str) -> None:
    """Checks `name` against the `blake3:<hex>` hash `state.json` recorded; checkpoints from
    before hashes were recorded cannot be checked and pass, as on the Rust side."""
    recorded = json.loads((checkpoint / STATE).read_text()).get("files", {})
    if name not in recorded:
        return
    hasher = blake3.blake3()
    with open(checkpoint / name, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            hasher.update(chunk)
    if f"blake3:{hasher.hexdigest()}" != recorded[name]:
        raise CheckpointError(
            f"{checkpoint / name}: the file does not match the content hash recorded when the checkpoint was "
            "saved (it was changed or damaged since); nothing was loaded from it"
        )


def recorded_recipe(checkpoint: Path) -> dict[str, Any] | None:
    """The resolved recipe of `checkpoint`: its `identity.json`, else its run folder's `config.toml`."""
    identity = checkpoint / IDENTITY
    if identity.is_file():
        return tomllib.loads(json.loads(identity.read_text())["config"])
    run_config = checkpoint.parent.parent / RUN_CONFIG
    if checkpoint.parent.name == "checkpoints" and run_config.is_file():
        return tomllib.loads(run_config.read_text())
    return None
