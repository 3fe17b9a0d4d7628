"""SAM's ViT image encoder (ViT-B/L/H, the distillation teachers), laid out like the official checkpoints.

Parameter names (``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``neck.*``) follow the
official segment-anything state_dict so ``sam_vit_{b,l,h}_*.pth`` load strictly. Blocks either
attend inside 14x14 windows (the 64x64 token grid zero-padded to 70x70) or globally over all
tokens; both add MViTv2's decomposed relative-position bias to the attention logits.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock, window_partition, window_unpartition


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H / p, W / p, C) channels-last tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: int) -> torch.Tensor:
    """Decomposed relative-position bias for a square ``size`` x ``size`` grid attending to itself.

    ``q`` is (N, size * size, head_dim) (unscaled queries); the tables hold one row per offset
    ``i - j`` in ``[-(size - 1), size - 1]``. Returns the additive (N, L, L) bias, L = size * size,
    where query (h, w) and key (h', w') get ``q . rel_pos_h[h - h'] + q . rel_pos_w[w - w']``.
    """
    coords = torch.arange(size, device=q.device)
    index = coords[:, None] - coords[None, :] + (size - 1)
    table_h = rel_pos_h[index].to(q.dtype)  # (size_q, size_k, head_dim)
    table_w = rel_pos_w[index].to(q.dtype)
    grid = q.reshape(q.shape[0], size, size, q.shape[-1])
    bias_h = torch.einsum("nhwc,hkc->nhwk", grid, table_h)
    bias_w = torch.einsum("nhwc,wkc->nhwk", grid, table_w)
    length = size * size
    return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(q.shape[0], length, length)


class Attention(nn.Module):
    """Multi-head self-attention over a square token grid, with decomposed relative-position bias.

    ``qkv`` output reshapes to (B, L, 3, heads, head_dim): all queries first, then keys, then values.
    ``grid_size`` is the side of the grid it attends over (the window, or the whole 64x64 map).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = grid_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h != self.grid_size or w != self.grid_size:
            raise ValueError(f"attention built for a {self.grid_size}x{self.grid_size} grid got {h}x{w}")
        length = h * w
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = rel_pos_bias(q.reshape(b * self.num_heads, length, self.head_dim), self.rel_pos_h, self.rel_pos_w, h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(b, self.num_heads, length, length))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention over ``grid_size`` x ``grid_size`` tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            size = (y.shape[1], y.shape[2])
            windows, padded = window_partition(y, self.window_size, size)
            y = window_unpartition(self.attn(windows), self.window_size, padded, size)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT backbone + neck: (B, 3, 1024, 1024) normalised pixels -> (B, 256, 64, 64).

    Blocks listed in ``global_attn_indexes`` attend over the whole token grid, the others inside
    ``window_size`` windows. Defaults are ViT-B.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        img_size: int = 1024,
        patch_size: int = 16,
        window_size: int = 14,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, grid) for i in range(depth)]
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
