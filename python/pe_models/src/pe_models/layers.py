"""The transformer layers, standard and tied (the paper's Section 3.1), with timm's names for the
standard ones and the Rust `pe-layers` names for the tied ones.

| standard | tied |
|---|---|
| `fc2(F(fc1 x + b₁)) + b₂` | `Wᵀ F(W x + b₁) + b₂` (`weight: [hidden, dim]`) |
| `Q, K, V = qkv(x)`, out `proj(x̂)` | `Q, K, V = W_q x, W_kv x, W_kvᵀ x`, out `W_qᵀ x̂` |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: timm's `trunc_normal_(std=0.02)` for ViT weights.
VIT_STD = 0.02


def trunc_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """timm's ViT init: N(0, 0.02²) truncated to the absolute bounds [-2, 2]."""
    return nn.init.trunc_normal_(tensor, std=VIT_STD, a=-2.0, b=2.0)


def vit_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """A linear initialised as timm's ViT does: weight ~ trunc_normal(0.02), bias 0."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    trunc_normal_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples, rescaled by 1 / keep
    (timm's `DropPath` with `scale_by_keep=True`)."""

    def __init__(self, prob: float = 0.0):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = 1.0 - self.prob
        # One Bernoulli draw per sample: [B, 1, 1, ...].
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class Mlp(nn.Module):
    """timm's `Mlp`: `fc2(drop(gelu(fc1 x)))`, then dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = vit_linear(dim, hidden)
        self.fc2 = vit_linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [.., dim] -> [.., hidden] -> [.., dim]
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class PeMlp(nn.Module):
    """Eq. (4): `Wᵀ F(W x + b₁) + b₂` with one `W: [hidden, dim]`, half of `Mlp`'s weights."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(hidden, dim)))
        self.fc1_bias = nn.Parameter(torch.zeros(hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [.., dim] -> W x + b₁: [.., hidden]  (F.linear(x, A) applies A to each row: x Aᵀ)
        hidden = self.drop(F.gelu(F.linear(x, self.weight, self.fc1_bias)))
        # [.., hidden] -> Wᵀ h + b₂: [.., dim]
        return self.drop(F.linear(hidden, self.weight.t(), self.fc2_bias))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, drop: float) -> torch.Tensor:
    """Scaled dot-product attention over `heads`: [B, N, C] x3 -> [B, N, C]."""
    b, n, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    # [B, H, N, D] -> [B, N, H, D] -> [B, N, C]
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), dropout_p=drop)
    return out.transpose(1, 2).reshape(b, n, c)


class Attention(nn.Module):
    """timm's `Attention`: a fused `qkv` linear `[3·dim, dim]` and an output `proj`."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.qkv = vit_linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = vit_linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, C] -> [B, N, 3C] -> 3 x [B, N, C]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        mixed = attend(q, k, v, self.heads, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(mixed))


class PeAttention(nn.Module):
    """Eqs. (1)-(2): `Q = W_q x`, `K = W_kv x`, `V = W_kvᵀ x`, output `W_qᵀ x̂`, from two square
    matrices `wq`, `wkv: [dim, dim]`, plus the biases of the four projections."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.wq = nn.Parameter(trunc_normal_(torch.empty(dim, dim)))
        self.wkv = nn.Parameter(trunc_normal_(torch.empty(dim, dim)))
        bias = lambda: nn.Parameter(torch.zeros(dim)) if qkv_bias else None  # noqa: E731
        self.q_bias, self.k_bias, self.v_bias = bias(), bias(), bias()
        self.proj_bias = nn.Parameter(torch.zeros(dim))
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, C] -> 3 x [B, N, C]
        q = F.linear(x, self.wq, self.q_bias)
        k = F.linear(x, self.wkv, self.k_bias)
        v = F.linear(x, self.wkv.t(), self.v_bias)
        mixed = attend(q, k, v, self.heads, self.attn_drop if self.training else 0.0)
        # [B, N, C] -> W_qᵀ x̂ + b
        return self.proj_drop(F.linear(mixed, self.wq.t(), self.proj_bias))
