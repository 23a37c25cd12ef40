"""Building a model from a name or a config, and loading the weights a run or a file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Union

from torch import nn

from . import checkpoints, weights
from .config import ConfigError, ModelConfig, ResNetConfig, VitConfig, from_dict
from .preprocessing import Preprocessing
from .presets import preset
from .resnet import ResNet
from .vit import Vit

#: A registry name, a config (object, `{"arch": ...}` or `{"name": preset, ...overrides}` table),
#: or the path of a JSON file holding such a table (what `pe forward --config` reads).
ModelSpec = Union[str, Path, Mapping[str, Any], ModelConfig]

#: `[model]` keys that say where a run's training started, not what the model is.
INIT_KEYS = ("init", "init_exclude", "init_ema", "head_init_scale")


def model_config(spec: ModelSpec, **overrides: Any) -> ModelConfig:
    """The config `spec` names, with `overrides` (config fields) on top, checked."""
    if isinstance(spec, (ResNetConfig, VitConfig)):
        config = spec
    elif isinstance(spec, Mapping):
        config = _from_table(spec)
    elif isinstance(spec, Path) or str(spec).endswith(".json"):
        config = _from_table(json.loads(Path(spec).read_text()))
    else:
        config = preset(spec)
    return config.replace(**overrides) if overrides else config


def _from_table(table: Mapping[str, Any]) -> ModelConfig:
    """A `[model]` table as a recipe writes it: a preset `name` with overrides, or a full `arch` definition."""
    if "name" in table:
        if "arch" in table:
            raise ConfigError("give `name` (a registry model) or `arch` (a full definition), not both")
        rest = {k: v for k, v in table.items() if k != "name"}
        return preset(table["name"]).replace(**rest) if rest else preset(table["name"])
    return from_dict(table)


def build(config: ModelConfig) -> nn.Module:
    """A freshly initialised model (the Rust models' initialisations)."""
    return Vit(config) if isinstance(config, VitConfig) else ResNet(config)


def create_model(
    name_or_config: ModelSpec,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    ema: bool = False,
    **overrides: Any,
) -> nn.Module:
    """A model of the registry or of any config, in training mode like `timm.create_model`.

    `pretrained` is a run folder, a checkpoint folder or a safetensors file, loaded strictly;
    `ema=True` takes a checkpoint's EMA weights. With `num_classes` other than the weights', the
    classifier alone starts fresh (a fine-tune's new head), as timm and the Rust `model.init` do.
    `overrides` are config fields (`drop_path_rate=0.1`, `in_channels=1`, ...).
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    config = model_config(name_or_config, **overrides)
    if pretrained is None:
        if ema:
            raise ValueError("ema=True takes a checkpoint's EMA weights: pass pretrained=PATH too")
        return _finish(build(config), Preprocessing.default(config), None)
    source = checkpoints.resolve(pretrained, ema)
    model = build(config)
    _load(model, source.file, new_head=num_classes is not None)
    return _finish(model, _preprocessing(source, config), source.file)


def load(path: str | Path, ema: bool = False, model: ModelSpec | None = None) -> nn.Module:
    """A trained model, in eval mode, from a run folder, a checkpoint folder or a safetensors file.

    The architecture is the one the run recorded; a bare file needs `model` (a registry name or a
    config), which otherwise overrides the recorded one. `model.preprocessing` is the run's eval
    preprocessing (`[data]`), also as timm's `model.pretrained_cfg`.
    """
    source = checkpoints.resolve(path, ema)
    if model is None:
        if source.recipe is None:
            raise ConfigError(
                f"{source.file} records no architecture: name it, load(path, model='vit_pe_small' or a config)"
            )
        model = {k: v for k, v in source.recipe["model"].items() if k not in INIT_KEYS}
    config = model_config(model)
    net = build(config)
    _load(net, source.file, new_head=False)
    return _finish(net, _preprocessing(source, config), source.file).eval()


def _load(model: nn.Module, file: Path, new_head: bool) -> None:
    """Strict loading; with `new_head`, a stored classifier of another class count is left out."""
    state = weights.read(file)
    head = "head" if isinstance(model, Vit) else "fc"
    # A distilled ViT's second head is replaced with the first.
    heads = tuple(f"{h}." for h in (head, "head_dist") if h == head or getattr(model, h, None) is not None)
    stored = state.get(f"{head}.weight")
    other_classes = stored is not None and stored.shape[0] != model.num_classes
    if new_head and other_classes and stored.shape[1:] == (model.num_features,):
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        weights.load_strict(model, state, file, may_miss=lambda n: n.startswith(heads))
    else:
        weights.load_strict(model, state, file)


def _preprocessing(source: checkpoints.Source, config: ModelConfig) -> Preprocessing:
    if source.recipe is None:
        return Preprocessing.default(config)
    return Preprocessing.from_recipe(source.recipe.get("data", {}), config)


def _finish(model: nn.Module, preprocessing: Preprocessing, file: Path | None) -> nn.Module:
    """Attaches the preprocessing, also as timm's `pretrained_cfg` (`file`: the weights read)."""
    model.preprocessing = preprocessing
    model.pretrained_cfg = {**preprocessing.to_timm(), "num_classes": model.num_classes}
    if file is not None:
        model.pretrained_cfg["file"] = str(file)
    return model
