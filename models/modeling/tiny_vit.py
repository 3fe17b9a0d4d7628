"""TinyViT-5M image encoder with SAM's neck, laid out like the official TinySAM/MobileSAM checkpoints.

Parameter names (``patch_embed.seq.*``, ``layers.N.blocks.M.*``, ``neck.*``) follow the official
state_dict so checkpoints load strictly. The classifier head of the ImageNet model is not built.
"""

import itertools

import torch
from torch import nn

from .common import LayerNorm2d, window_partition, window_unpartition


class Conv2d_BN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (keys ``c.*`` and ``bn.*``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: 1024x1024 pixels -> 256x256 tokens."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2, or 1 for the 320-dim last stage), 1x1 conv; returns tokens."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        # The official model hard-codes stride 1 for these widths so the last stage stays at 64x64.
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks followed by a PatchMerging downsample."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, out_dim: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm feed-forward of a TinyViT block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-norm multi-head attention inside one window, with a learned relative-position bias.

    ``qkv`` is laid out per head: its output reshapes to (B, N, heads, 3 * head_dim) and each head
    splits into [q | k | v]. The bias table holds one value per head and per (|dy|, |dx|) offset.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

        points = list(itertools.product(range(window_size), range(window_size)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split(self.head_dim, dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        # Gather the bias from the parameter on every call: the official code caches it in eval()
        # before weights are loaded, which silently runs with stale biases. index_select, not [:, idxs]:
        # its backward sums the repeated indices in a fixed order on the CPU (training resumes bit for bit).
        bias = self.attention_biases.index_select(1, self.attention_bias_idxs.flatten()).view(-1, n, n)
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded windows, no attention mask), depthwise local conv, MLP."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, 3, 1, 1, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        windows, padded = window_partition(x.view(b, h, w, c), ws, (h, w))
        windows = self.attn(windows.reshape(-1, ws * ws, c)).view(-1, ws, ws, c)
        return window_unpartition(windows, ws, padded, (h, w)).view(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        x = x + self._window_attention(x)
        x = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.local_conv(x)
        x = x.view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """A stage of TinyViT blocks, optionally followed by PatchMerging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT backbone + SAM neck: (B, 3, 1024, 1024) normalised pixels -> (B, 256, 64, 64)."""

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            # Every merge halves the resolution except the last one (stride 1, see PatchMerging).
            stage_res = res // (2 ** min(i, len(embed_dims) - 2))
            resolution = (stage_res, stage_res)
            out_dim = embed_dims[i + 1] if i + 1 < len(embed_dims) else None
            if i == 0:
                layer: nn.Module = ConvLayer(dim, resolution, depths[i], out_dim, mbconv_expand_ratio)
            else:
                layer = BasicLayer(dim, resolution, depths[i], num_heads[i], window_sizes[i], mlp_ratio, out_dim)
            self.layers.append(layer)
        self.embed_size = res // (2 ** (len(embed_dims) - 2))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.embed_size, self.embed_size, c).permute(0, 3, 1, 2)
        return self.neck(x)
