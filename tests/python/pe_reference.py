"""An independent PyTorch implementation of the paper's PE models (Section 3), written from the
equations with tied weights as `W` and `W.t()` of one parameter. State-dict names match the Rust
models, so weights move between the two. Used by the parity tests and the train-step benchmark.
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class PeAttention(nn.Module):
    """Eqs. (1)-(2): Q = Wq x, K = Wkv x, V = Wkvᵀ x, output Wqᵀ x̂."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.wq = nn.Parameter(torch.empty(dim, dim))
        self.wkv = nn.Parameter(torch.empty(dim, dim))
        self.q_bias, self.k_bias, self.v_bias, self.proj_bias = (nn.Parameter(torch.empty(dim)) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q = x @ self.wq.t() + self.q_bias
        k = x @ self.wkv.t() + self.k_bias
        v = x @ self.wkv + self.v_bias
        split = lambda t: t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        # PyTorch's fused attention, as timm's Attention calls it (fused_attn).
        out = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, c)
        return out @ self.wq + self.proj_bias


class PeMlp(nn.Module):
    """Eq. (4): Wᵀ F(W x + b1) + b2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden, dim))
        self.fc1_bias = nn.Parameter(torch.empty(hidden))
        self.fc2_bias = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return F.gelu(x @ self.weight.t() + self.fc1_bias) @ self.weight + self.fc2_bias


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = PeAttention(dim, heads), PeMlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitPe(nn.Module):
    def __init__(self, c):
        super().__init__()
        dim, tokens = c["embed_dim"], (c["img_size"] // c["patch_size"]) ** 2 + 1
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(c["in_channels"], dim, c["patch_size"], c["patch_size"])
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))
        hidden = round(dim * c["mlp_ratio"])
        self.blocks = nn.ModuleList(Block(dim, c["heads"], hidden) for _ in range(c["depth"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, c["num_classes"])

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class PeBlock(nn.Module):
    """Eqs. (7)-(9) for one block: relu(x + bn3(Wᵀ G_i(bn1/relu(W x)))), G_i = 3×3 conv + BN + ReLU."""

    def __init__(self, width, channels):
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(width), nn.BatchNorm2d(width), nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x, w):
        h = F.relu(self.bn1(F.conv2d(x, w[:, :, None, None])))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(F.conv2d(h, w.t()[:, :, None, None]))
        return F.relu(h + x)


class PeStage(nn.Module):
    def __init__(self, c_in, width, c_out, blocks, stride, first_block):
        super().__init__()
        self.shared_w = nn.Parameter(torch.empty(width, c_out))
        self.entrance, first_pe = None, 0
        if first_block == "standard":
            downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            self.add_module("0", torchvision.models.resnet.Bottleneck(c_in, width, stride, downsample))
            self.entrance, first_pe = "0", 1
        elif stride != 1 or c_in != c_out:
            self.transition = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            self.entrance = "transition"
        self.pe_blocks = [str(i) for i in range(first_pe, blocks)]
        for i in self.pe_blocks:
            self.add_module(i, PeBlock(width, c_out))

    def forward(self, x):
        if self.entrance is not None:
            x = getattr(self, self.entrance)(x)
        for i in self.pe_blocks:
            x = getattr(self, i)(x, self.shared_w)
        return x


class ResNetPe(nn.Module):
    """Bottleneck ResNet whose listed stages are PE stages; the others are torchvision's."""

    def __init__(self, c):
        super().__init__()
        self.imagenet_stem = c["stem"] == "imagenet"
        kernel, stride = (7, 2) if self.imagenet_stem else (3, 1)
        self.conv1 = nn.Conv2d(c["in_channels"], c["stem_channels"], kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c["stem_channels"])
        c_in = c["stem_channels"]
        for index, (blocks, width) in enumerate(zip(c["layers"], c["widths"])):
            stride, c_out = (1 if index == 0 else 2), width * 4
            if index + 1 in c["pe_stages"]:
                stage = PeStage(c_in, width, c_out, blocks, stride, c["first_block"])
            else:
                downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                first = torchvision.models.resnet.Bottleneck(c_in, width, stride, downsample)
                rest = [torchvision.models.resnet.Bottleneck(c_out, width) for _ in range(blocks - 1)]
                stage = nn.Sequential(first, *rest)
            self.add_module(f"layer{index + 1}", stage)
            c_in = c_out
        self.stages = len(c["layers"])
        self.fc = nn.Linear(c_in, c["num_classes"])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet_stem:
            x = F.max_pool2d(x, 3, 2, 1)
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(x.mean((2, 3)))
