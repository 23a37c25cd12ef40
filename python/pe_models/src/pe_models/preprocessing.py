"""The eval preprocessing a model expects, from a recipe's `[data]` section: what `pe eval` does
to an image before the model sees it (resize the shorter side to `floor(img_size / crop_pct)`,
centre-crop `img_size`, scale to [0, 1], normalise), in timm's `pretrained_cfg` terms."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .config import ModelConfig

#: The Rust `DataConfig` defaults (timm's): ImageNet statistics, bilinear, crop 0.875.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int, int]
    crop_pct: float
    #: "bilinear" or "bicubic" (PIL's antialiased filters, as pe-data resizes).
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_recipe(cls, data: Mapping[str, Any], config: ModelConfig) -> "Preprocessing":
        """From a run's `[data]` table; keys it lacks take the Rust defaults."""
        size = data.get("img_size", 224)
        # `random` picks a filter per training image; evaluation resizes bilinearly.
        interpolation = "bicubic" if data.get("interpolation") == "bicubic" else "bilinear"
        return cls(
            input_size=(config.in_channels, size, size),
            crop_pct=float(data.get("crop_pct", DEFAULT_CROP_PCT)),
            interpolation=interpolation,
            mean=tuple(data.get("mean", IMAGENET_MEAN)),
            std=tuple(data.get("std", IMAGENET_STD)),
        )

    @classmethod
    def default(cls, config: ModelConfig) -> "Preprocessing":
        """The Rust defaults at the model's own input size, for weights without a recipe."""
        return cls.from_recipe({"img_size": config.default_img_size}, config)

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop (timm's `scale_size`)."""
        return math.floor(self.input_size[-1] / self.crop_pct)

    def to_timm(self) -> dict[str, Any]:
        """As timm's `pretrained_cfg` keys, which `timm.data.resolve_data_config` reads."""
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "mean": self.mean,
            "std": self.std,
        }

    def transform(self):
        """A torchvision transform from a PIL image to the model's normalised [C, H, W] input."""
        from torchvision import transforms as T

        mode = T.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        return T.Compose([
            _to_rgb,
            T.Resize(self.resize_size, interpolation=mode),
            T.CenterCrop(self.input_size[-1]),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])


def _to_rgb(image):
    """pe-data decodes every image to RGB (Fashion-MNIST's grey JPEGs too)."""
    return image.convert("RGB")
