"""DeiT/ViT with timm's parameter names, and ViT-PE: every block's attention and MLP tied.

The parameter names are timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.{norm1,attn,norm2,mlp}`, `norm`, `head`) and, for the tied layers, the Rust model's
(`attn.wq`, `attn.wkv`, `mlp.weight`, ...), so the safetensors `pe` writes load strictly. With
`distilled`, DeiT's distillation token and second head are timm's `dist_token` and `head_dist`
(`deit_*_distilled_patch16_224`), and the logits are the two heads' mean.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VitConfig
from .layers import Attention, DropPath, Mlp, PeAttention, PeMlp, trunc_normal_, vit_linear

#: timm's ViT LayerNorm epsilon.
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches as one strided conv: [B, C_in, H, W] -> [B, N, C]."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        # nn.Conv2d's default init, as timm leaves it (and the Rust model copies).
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H/p, W/p] -> [B, N, C]
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm block: `x + drop_path(attn(norm1 x))`, then `x + drop_path(mlp(norm2 x))`."""

    def __init__(self, config: VitConfig, drop_path: float):
        super().__init__()
        dim, c = config.embed_dim, config
        attention = PeAttention if c.pe_attention else Attention
        mlp = PeMlp if c.pe_mlp else Mlp
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = attention(dim, c.heads, c.qkv_bias, attn_drop=c.attn_drop_rate, proj_drop=c.drop_rate)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = mlp(dim, c.hidden, drop=c.drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, C] -> [B, N, C]
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Vit(nn.Module):
    """The class-token ViT of DeiT (and of the paper's ViT-PE when `pe_attention`/`pe_mlp` are set)."""

    def __init__(self, config: VitConfig):
        super().__init__()
        c = self.config = config
        dim, tokens = c.embed_dim, (c.img_size // c.patch_size) ** 2 + c.prefix_tokens
        self.num_classes, self.num_features = c.num_classes, dim
        self.patch_embed = PatchEmbed(c.in_channels, dim, c.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        if c.distilled:
            self.dist_token = nn.Parameter(trunc_normal_(torch.empty(1, 1, dim)))
        self.pos_embed = nn.Parameter(trunc_normal_(torch.empty(1, tokens, dim)))
        self.pos_drop = nn.Dropout(c.drop_rate)
        # Stochastic depth grows linearly from 0 to drop_path_rate over the blocks (timm's rule).
        rates = [c.drop_path_rate * i / (c.depth - 1) for i in range(c.depth)] if c.depth > 1 else [0.0]
        self.blocks = nn.Sequential(*(Block(c, rate) for rate in rates))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = vit_linear(dim, c.num_classes)
        if c.distilled:
            self.head_dist = vit_linear(dim, c.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens, class (then distillation) token first: [B, C_in, H, W] -> [B, N, C]."""
        patches = self.patch_embed(x)
        prefix = [self.cls_token] + ([self.dist_token] if self.config.distilled else [])
        prefix = [t.expand(x.shape[0], -1, -1).to(patches.dtype) for t in prefix]
        x = self.pos_drop(torch.cat([*prefix, patches], dim=1) + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The class token's logits (or its features with `pre_logits`): [B, N, C] -> [B, classes].
        A distilled model gives both heads' mean (its distillation head alone: `forward_heads`)."""
        if pre_logits:
            return x[:, 0]
        if self.config.distilled:
            return sum(self.forward_heads(x)) / 2
        return self.head(x[:, 0])

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each head's logits from normalised tokens: (class,) or (class, distillation)."""
        heads = [self.head] + ([self.head_dist] if self.config.distilled else [])
        return tuple(head(x[:, i]) for i, head in enumerate(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, num_classes]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for `num_classes` (timm's interface, for fine-tuning)."""
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        self.head = vit_linear(self.num_features, num_classes).to(self.norm.weight.device)
        if self.config.distilled:
            self.head_dist = vit_linear(self.num_features, num_classes).to(self.norm.weight.device)

    def no_weight_decay(self) -> set[str]:
        """What timm's optimizer factory and the Rust recipes (`no_decay_names`) exempt from decay."""
        return {"pos_embed", "cls_token", "dist_token"}
