"""Model definitions as plain dataclasses, in the shape of the Rust `ModelConfig`.

A config is what a recipe's `[model]` section, a run's `config.toml` and `pe forward --config`
hold: `{"arch": "resnet" | "vit", ...fields}`. Reading is as strict as the Rust side's serde
(`deny_unknown_fields`): an unknown or missing field, or a value of the wrong kind, is an error,
so a typo never builds a different model than the one a run trained.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping


class ConfigError(ValueError):
    """A model config that cannot be read or built."""


def _ints(values: Any, name: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not all(_is_int(v) for v in values):
        raise ConfigError(f"`{name}` must be a list of integers, got {values!r}")
    return tuple(values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_kind(name: str, value: Any, kind: type, choices: tuple[str, ...] = ()) -> Any:
    """`value` as the field's kind: TOML/JSON numbers and booleans, or one of `choices`."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and _is_int(value):
        return value
    if kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind is str and isinstance(value, str) and value in choices:
        return value
    expected = " or ".join(repr(c) for c in choices) if choices else kind.__name__
    raise ConfigError(f"`{name}`: expected {expected}, got {value!r}")


#: The field annotations (strings, under `from __future__ import annotations`) as kinds.
_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "tuple[int, ...]": tuple}


class _Config:
    """Reading and writing shared by both architectures (fields are declared by the subclasses)."""

    arch: ClassVar[str]
    #: Text fields and the values they take.
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]):
        """Reads the fields of `table` (without `arch`), as strictly as serde's `deny_unknown_fields`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.arch}: unknown field(s) {unknown}, expected one of {list(fields)}")
        missing = [n for n, f in fields.items() if n not in table and _required(f)]
        if missing:
            raise ConfigError(f"{cls.arch}: missing field(s) {missing}")
        values = {}
        for name, value in table.items():
            kind = _KINDS[fields[name].type]
            if kind is tuple:
                values[name] = _ints(value, name)
            else:
                values[name] = _check_kind(name, value, kind, cls._choices.get(name, ()))
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The config as `pe forward --config` and a recipe's `[model]` take it."""
        out = {"arch": self.arch}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any):
        """A copy with `changes` applied and checked, as a recipe's keys override a preset."""
        table = {**self.to_dict(), **changes}
        del table["arch"]
        return type(self).from_dict(table)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass(frozen=True)
class ResNetConfig(_Config):
    """A torchvision-style ResNet; `pe_stages` (1-based) become stages sharing one `W`."""

    arch: ClassVar[str] = "resnet"
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "block": ("basic", "bottleneck"),
        "stem": ("imagenet", "small"),
        "first_block": ("projection", "standard"),
    }

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str
    stem_channels: int
    in_channels: int
    num_classes: int
    pe_stages: tuple[int, ...] = ()
    first_block: str = "projection"
    zero_init_last_bn: bool = False

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def default_img_size(self) -> int:
        """ResNets take any size; 224 with the ImageNet stem, 28 (Fashion-MNIST) with the small one."""
        return 28 if self.stem == "small" else 224

    def validate(self) -> None:
        """The Rust `ResNetConfig::validate` checks, with its messages."""
        if not self.layers or len(self.layers) != len(self.widths):
            raise ConfigError(
                f"ResNet: layers ({len(self.layers)}) and widths ({len(self.widths)}) must be non-empty "
                "and of equal length"
            )
        if 0 in self.layers:
            raise ConfigError("ResNet: every stage needs at least one block")
        for stage in self.pe_stages:
            if not 1 <= stage <= len(self.layers):
                raise ConfigError(f"ResNet: pe_stages entry {stage} is not a stage (1..={len(self.layers)})")
            if self.block != "bottleneck":
                raise ConfigError(
                    'ResNet: pe_stages need block = "bottleneck": the paper\'s W/Wᵀ pair is the 1×1 reduce/expand'
                )
            if self.first_block == "standard" and self.layers[stage - 1] < 2:
                raise ConfigError(
                    f'ResNet: stage {stage} has one block; first_block = "standard" leaves none to share W'
                )
        if min(self.num_classes, self.in_channels, self.stem_channels) < 1:
            raise ConfigError("ResNet: num_classes, in_channels and stem_channels must be positive")


@dataclass(frozen=True)
class VitConfig(_Config):
    """A timm-style ViT/DeiT; `pe_attention` / `pe_mlp` tie every block's attention / MLP."""

    arch: ClassVar[str] = "vit"

    img_size: int
    patch_size: int
    in_channels: int
    num_classes: int
    embed_dim: int
    depth: int
    heads: int
    mlp_ratio: float
    qkv_bias: bool = True
    pe_attention: bool = False
    pe_mlp: bool = False
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    distilled: bool = False

    @property
    def prefix_tokens(self) -> int:
        """The class token, and the distillation token when `distilled`."""
        return 2 if self.distilled else 1

    @property
    def hidden(self) -> int:
        """The MLP width, rounded half away from zero as Rust's `f64::round`."""
        return math.floor(self.embed_dim * self.mlp_ratio + 0.5)

    @property
    def default_img_size(self) -> int:
        return self.img_size

    def validate(self) -> None:
        """The Rust `VitConfig::validate` checks, with its messages."""
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ConfigError(f"ViT: img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.heads < 1 or self.embed_dim % self.heads:
            raise ConfigError(f"ViT: embed_dim {self.embed_dim} must be divisible by heads {self.heads}")
        if self.depth < 1 or self.num_classes < 1 or self.mlp_ratio <= 0:
            raise ConfigError("ViT: depth, num_classes and mlp_ratio must be positive")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"ViT: {name} must be in [0, 1), got {getattr(self, name)}")


ModelConfig = ResNetConfig | VitConfig
ARCHS = {c.arch: c for c in (ResNetConfig, VitConfig)}


def from_dict(table: Mapping[str, Any]) -> ModelConfig:
    """A full definition, `{"arch": "resnet" | "vit", ...}` (serde's internally tagged enum)."""
    arch = table.get("arch")
    if arch not in ARCHS:
        raise ConfigError(f"`arch` must be one of {list(ARCHS)}, got {arch!r}")
    return ARCHS[arch].from_dict({k: v for k, v in table.items() if k != "arch"})
