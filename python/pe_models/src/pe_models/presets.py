"""The registry's named models, the same presets as the Rust `pe_models::registry` (`pe summary`)."""

from __future__ import annotations

from dataclasses import replace

from .config import ConfigError, ModelConfig, ResNetConfig, VitConfig


def _imagenet_resnet(block: str, layers: tuple[int, ...]) -> ResNetConfig:
    return ResNetConfig(
        block=block, layers=layers, widths=(64, 128, 256, 512), stem="imagenet",
        stem_channels=64, in_channels=3, num_classes=1000,
    )


def _deit(embed_dim: int, heads: int) -> VitConfig:
    return VitConfig(
        img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=embed_dim,
        depth=12, heads=heads, mlp_ratio=4.0,
    )


def _pe(config: VitConfig) -> VitConfig:
    """The paper's ViT-PE: attention and MLP tied in every block."""
    return replace(config, pe_attention=True, pe_mlp=True)


def _distilled(config: VitConfig) -> VitConfig:
    """DeiT's distillation token and second head (timm's `dist_token`, `head_dist`)."""
    return replace(config, distilled=True)


_RESNET50 = _imagenet_resnet("bottleneck", (3, 4, 6, 3))
_RESNET_MINI = replace(
    _RESNET50, layers=(2, 2, 2), widths=(8, 16, 32), stem="small", stem_channels=16, num_classes=10
)
_VIT_MINI = replace(_deit(192, 3), img_size=28, patch_size=4, num_classes=10, embed_dim=96, depth=4)

#: name -> (config, what it is), in the order `pe summary` prints them.
PRESETS: dict[str, tuple[ModelConfig, str]] = {
    "resnet18": (_imagenet_resnet("basic", (2, 2, 2, 2)), "torchvision resnet18"),
    "resnet34": (_imagenet_resnet("basic", (3, 4, 6, 3)), "torchvision resnet34"),
    "resnet50": (_RESNET50, "torchvision resnet50"),
    "resnet50_pe": (replace(_RESNET50, pe_stages=(1, 2, 3, 4)), "ResNet50-PE¹: one W per stage in all 4 stages"),
    "resnet50_pe_stage34": (replace(_RESNET50, pe_stages=(3, 4)), "ResNet50-PE²: stages 3-4 share one W each"),
    "deit_tiny": (_deit(192, 3), "timm deit_tiny_patch16_224"),
    "deit_small": (_deit(384, 6), "timm deit_small_patch16_224"),
    "vit_pe_tiny": (_pe(_deit(192, 3)), "DeiT-T geometry, tied attention + MLP"),
    "vit_pe_small": (_pe(_deit(384, 6)), "DeiT-S geometry, tied attention + MLP (the paper's ViT-PE)"),
    "deit_tiny_distilled": (_distilled(_deit(192, 3)), "timm deit_tiny_distilled_patch16_224"),
    "deit_small_distilled": (_distilled(_deit(384, 6)), "timm deit_small_distilled_patch16_224"),
    "vit_pe_small_distilled": (_distilled(_pe(_deit(384, 6))), "vit_pe_small with DeiT's distillation token"),
    "resnet_mini": (_RESNET_MINI, "CPU scale: 28×28 input, 3 bottleneck stages of widths 8-32"),
    "resnet_mini_pe": (replace(_RESNET_MINI, pe_stages=(1, 2, 3)), "resnet_mini with one shared W in each stage"),
    "vit_mini": (_VIT_MINI, "CPU scale: 28×28 input, patch 4, dim 96, depth 4, 3 heads"),
    "vit_pe_mini": (_pe(_VIT_MINI), "vit_mini with tied attention + MLP"),
    "resnet50_matched": (
        replace(_RESNET50, widths=(53, 106, 212, 424), stem_channels=53),
        "ResNet-50 at width ×53/64: the parameters of PE¹ and PE², untied",
    ),
    "vit_small_matched": (
        replace(_deit(384, 6), embed_dim=276), "DeiT-S at width 276: the parameters of vit_pe_small, untied"
    ),
    "resnet_mini_matched": (
        replace(_RESNET_MINI, widths=(7, 14, 28), stem_channels=14),
        "resnet_mini at width ×7/8: the parameters of resnet_mini_pe, untied",
    ),
    "vit_mini_matched": (
        replace(_VIT_MINI, embed_dim=69), "vit_mini at width 69: the parameters of vit_pe_mini, untied"
    ),
}


def list_models() -> list[str]:
    """The registry's names."""
    return list(PRESETS)


def preset(name: str) -> ModelConfig:
    """The config registered under `name`, or an error listing the valid names."""
    try:
        return PRESETS[name][0]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(PRESETS)}") from None
