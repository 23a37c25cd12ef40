"""Every registry model as a timm model named `pe_<name>` (`timm.create_model("pe_vit_pe_small")`).

The prefix keeps the names apart from timm's own: timm has `resnet50` and `deit_small_patch16_224`
with other defaults, and `vit_pe_*` there are Meta's Perception Encoder models. timm's
`checkpoint_path=FILE` loads a safetensors file strictly; `pretrained=True` takes a run folder,
checkpoint folder or file through `pretrained_cfg_overlay=dict(file=PATH)`, as timm does for local
weights, since no weights are published.
"""

from __future__ import annotations

from timm import is_model, list_models
from timm.models import register_model

from .factory import create_model
from .presets import PRESETS

PREFIX = "pe_"
#: What timm calls this module (the last part of its name) in `timm.list_models(module=...)`.
MODULE = __name__.rsplit(".", 1)[-1]


def _entrypoint(name: str, note: str):
    def entrypoint(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        file = (pretrained_cfg_overlay or {}).get("file")
        if pretrained and not file:
            raise ValueError(
                f"{PREFIX}{name} has no published weights: pass pretrained_cfg_overlay=dict(file=RUN_OR_FILE) "
                "or checkpoint_path=FILE.safetensors"
            )
        if "in_chans" in kwargs:  # timm's name for the input channels
            kwargs["in_channels"] = kwargs.pop("in_chans")
        return create_model(name, pretrained=file if pretrained else None, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = PREFIX + name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"pe_models {name!r}: {note}."
    return entrypoint


def register() -> None:
    """Registers the presets; a name timm already uses for a model of its own is an error."""
    ours = set(list_models(module=MODULE))
    for name, (_, note) in PRESETS.items():
        if is_model(PREFIX + name) and PREFIX + name not in ours:
            raise RuntimeError(f"timm already has a model named {PREFIX + name}; pe_models cannot register it")
        register_model(_entrypoint(name, note))
