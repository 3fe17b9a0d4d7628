"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Parameters and results are SAM's. The attentions between the few prompt tokens (T ~ 7) and the
4096 image tokens are computed with the projections re-associated onto the token side: instead of
projecting all image tokens to q/k/v (4096 x 256 x 128 MACs each), the token-side vectors are
mapped back through the projection weights, so every image-sized product is 4096 x 256 x 8T.
For T < 16 tokens this cuts the decoder's work by more than a third; the maths is the same.
"""

import math

import torch
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with an optional downscaled internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)
        self.head_scale = math.sqrt(internal_dim // num_heads)  # logits are divided by sqrt(head_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _head_weight(self, linear: nn.Linear) -> torch.Tensor:
        """(internal, C) projection weight as (heads, head_dim, C)."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Plain attention of q (B, Nq, C) over k/v (B, Nk, C); ``key_bias`` (B, Nk) is added to the logits."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn = (q @ k.permute(0, 1, 3, 2)) / self.head_scale
        if key_bias is not None:
            attn = attn + key_bias[:, None, None, :]
        out = torch.softmax(attn, dim=-1) @ v
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens q (B, T, C) attend to image tokens k/v (M, HW, C), M in {1, B}: same result as ``forward``.

        Per head h: logits = (W_k,h^T q_h) . k (the key bias adds a per-query constant, which softmax
        ignores) and the output is W_v,h (sum_n p_n v_n) + b_v,h since the weights sum to one.
        """
        b, t, _ = q.shape
        qp = self.q_proj(q).reshape(b, t, self.num_heads, -1)
        q_img = torch.einsum("bthd,hdc->bhtc", qp, self._head_weight(self.k_proj)).reshape(b, -1, q.shape[2]) / self.head_scale
        # (HW, heads*T) logits: only the small token-side matrix is transposed, never the image tokens
        p = torch.softmax(k @ q_img.transpose(1, 2), dim=1)
        pooled = (p.transpose(1, 2) @ v).reshape(b, self.num_heads, t, -1)  # (B, heads, T, C)
        out = torch.einsum("bhtc,hdc->bthd", pooled, self._head_weight(self.v_proj)).reshape(b, t, -1) + self.v_proj.bias
        return self.out_proj(out)

    def image_to_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens q (M, HW, C), M in {1, B}, attend to tokens k/v (B, T, C): same result as ``forward``.

        Per head h: logits = q . (W_q,h^T k_h) + b_q,h . k_h, and the output projection is applied
        to the few value tokens first, so the image side sees one (HW, heads*T) x (heads*T, C) product.
        """
        b, t, c = k.shape
        kp = self.k_proj(k).reshape(b, t, self.num_heads, -1)
        k_img = torch.einsum("bthd,hdc->bhtc", kp, self._head_weight(self.q_proj)).reshape(b, -1, c) / self.head_scale
        k_bias = torch.einsum("bthd,hd->bht", kp, self.q_proj.bias.reshape(self.num_heads, -1)) / self.head_scale
        logits = (q @ k_img.transpose(1, 2)).reshape(b, -1, self.num_heads, t) + k_bias[:, None]
        if key_bias is not None:
            logits = logits + key_bias[:, None, None, :]
        p = torch.softmax(logits, dim=-1).reshape(b, -1, self.num_heads * t)
        vp = self.v_proj(v).reshape(b, t, self.num_heads, -1)
        out_weight = self.out_proj.weight.reshape(c, self.num_heads, -1)
        values = torch.einsum("bthd,chd->bhtc", vp, out_weight).reshape(b, -1, c)  # (B, heads*T, C)
        return p @ values + self.out_proj.bias


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP, image->token; each followed by a LayerNorm."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        token_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_bias)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_bias)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # keys do not change until norm4, so both cross attentions share k
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token.image_to_tokens(k, q, queries, token_bias))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks and a final token->image attention."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0) for i in range(depth)]
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor, token_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run B prompts' tokens (B, T, C) against image tokens (M, HW, C), M in {1, B}, with PE (1, HW, C).

        Returns (tokens (B, T, C), image tokens (B, HW, C)). ``token_bias`` (B, T), 0 or a large
        negative number, hides tokens from every attention that reads them as keys, so empty prompt
        slots change nothing.
        """
        keys = image_tokens
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, token_bias)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys))
        return queries, keys
