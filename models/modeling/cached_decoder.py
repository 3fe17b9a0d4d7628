"""The mask decoder split into a per-image part and a cheap per-prompt part (same maths, same weights).

Without a dense mask prompt, every prompt on an image sees the same image tokens S (embedding +
no-mask embedding) and positional encoding. The first block's projections of them are computed
once per image. After the first image->token attention the image tokens of a prompt are
LayerNorm(S + P U): a shared part plus a rank-(heads x tokens) update, where P (HW, heads*T) are
that prompt's attention weights and U (heads*T, C) its projected values. Such a tensor is carried
as ``a * S' + R W`` (a row scale, a shared matrix, a low-rank product) and never materialised:

- a linear map M splits into ``a * (S' M^T)`` (computed once per image) and ``R (W M^T)``;
- LayerNorm needs each row's variance, which is a quadratic form in R plus cross terms whose
  image-side factors are again per-image products (``S'_c Wo`` for the value projections Wo);
- the mask branch's first transposed convolution is such a linear map; its GELU and the second
  transposed convolution run at full size, but only for prompts whose masks are wanted.

MACs per one-click prompt (T = 7 tokens, torch's flop counter) fall from 1.02 G to 0.25 G for the
transformer and IoU head plus 0.27 G for the masks; the per-image part costs 2.1 G once
(``docs/decoder.md``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention

#: Names of the per-image tensors, in the order ``image_state`` returns them. Layouts (batch 1, n = hw
#: image tokens last so that per-prompt tensors stream): (1, H, d, n) keys / queries / value
#: cross-products, (1, H, n, d) values, (1, 1, n) row statistics, (1, n, 4 * C/4) the upscaling's part.
STATE_NAMES = (
    "k1", "v1", "q1", "s0c_wo1", "s0c_sq",
    "s1_k2", "s1_v2", "s1_q2", "pe_k2", "pe_q2", "s1c_sq", "s1cg_wo1", "s1cg_sum", "s1c_wo2", "s1c_c2",
    "s2_kf", "s2_vf", "pe_kf", "s2_up",
)  # fmt: skip

LowRank = tuple[torch.Tensor, torch.Tensor]  # (R^T (B, k, n), W (B, k, C)): the tensor R W, never formed


class CachedMaskDecoder(nn.Module):
    """Prompt encoder + mask decoder as ``image_state(embedding)`` once and ``forward(state, prompts)`` per batch.

    ``forward`` equals ``Sam.decode`` without ``mask_input`` up to float rounding; a prompt with a
    dense mask changes the image side and must take the plain decoder.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.num_heads = mask_decoder.transformer.layers[0].cross_attn_image_to_token.num_heads
        self.register_buffer("dense_pe", prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def image_state(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1, C, h, w) embedding -> the ``STATE_NAMES`` tensors."""
        t = self.mask_decoder.transformer
        b1, b2, final = t.layers[0], t.layers[1], t.final_attn_token_to_image
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = (image_embeddings + no_mask).flatten(2).transpose(1, 2)  # (1, n, C)
        pe = self.dense_pe.flatten(2).transpose(1, 2)
        heads_t, heads = self._heads_t, self._heads_image
        wo1 = b1.cross_attn_image_to_token.out_proj
        s0c = _centred(src + wo1.bias)
        # block 2 and the final attention read LayerNorm outputs; these are their shared parts
        g1, be1 = b1.norm4.weight, b1.norm4.bias
        s1 = s0c * g1
        t2i, i2t, wo2 = b2.cross_attn_token_to_image, b2.cross_attn_image_to_token, b2.cross_attn_image_to_token.out_proj
        s1c = _centred(s1)
        s2 = s1c * b2.norm4.weight
        up1, _ = MaskDecoder.as_linear(self.mask_decoder.output_upscaling[0])
        return (
            heads_t(b1.cross_attn_token_to_image.k_proj(src + pe)), heads(b1.cross_attn_token_to_image.v_proj(src)),
            heads_t(b1.cross_attn_image_to_token.q_proj(src + pe)), heads_t(s0c @ wo1.weight), _row(s0c.pow(2).mean(-1)),
            heads_t(F.linear(s1, t2i.k_proj.weight)), heads(F.linear(s1, t2i.v_proj.weight)), heads_t(F.linear(s1, i2t.q_proj.weight)),
            heads_t(t2i.k_proj(pe + be1)), heads_t(i2t.q_proj(pe + be1)),
            _row(s1c.pow(2).mean(-1)), heads_t((s1c * g1) @ wo1.weight), _row((s1c * g1).sum(-1)), heads_t(s1c @ wo2.weight),
            _row(s1c @ (be1 + wo2.bias)),
            heads_t(F.linear(s2, final.k_proj.weight)), heads(F.linear(s2, final.v_proj.weight)), heads_t(final.k_proj(pe + b2.norm4.bias)),
            F.linear(s2, up1),
        )  # fmt: skip

    def _heads_t(self, x: torch.Tensor) -> torch.Tensor:
        """(1, n, H*d) -> (1, H, d, n)."""
        return x.unflatten(-1, (self.num_heads, -1)).permute(0, 2, 3, 1)

    def _heads_image(self, x: torch.Tensor) -> torch.Tensor:
        """(1, n, H*d) -> (1, H, n, d)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self, state: tuple[torch.Tensor, ...], point_coords: torch.Tensor, point_labels: torch.Tensor, with_masks: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts (B, N, 2) / (B, N) against a cached image state.

        Returns all 4 tokens' low-res logits (B, 4, 256, 256) and IoU predictions (B, 4); with
        ``with_masks=False`` the logits are an empty (B, 0) tensor and the mask branch is skipped.
        """
        iou, parts = self.scores(state, point_coords, point_labels)
        if not with_masks:
            return iou.new_zeros(iou.shape[0], 0), iou
        return self.masks(state[STATE_NAMES.index("s2_up")], *parts), iou

    def scores(
        self, state: tuple[torch.Tensor, ...], point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """IoU predictions (B, 4) and what ``masks`` needs to finish the same prompts later.

        The parts are the final image tokens in low-rank form, scale (B, 1, n), R^T (B, k, n) and
        W (B, k, C), and the hypernetwork outputs (B, 4, C/8): a fraction of the transformer's work.
        """
        st = dict(zip(STATE_NAMES, state))
        dec, pe_enc = self.mask_decoder, self.prompt_encoder
        b1, b2 = dec.transformer.layers
        c = dec.iou_token.weight.shape[1]
        sparse = pe_enc.embed_points(point_coords, point_labels)
        b = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        token_bias = torch.cat([sparse.new_zeros(b, out_tokens.shape[0]), pe_enc.slot_bias(point_labels)], dim=1)

        # block 1: the image tokens are shared, so all their projections come from the state
        q = b1.norm1(b1.self_attn(tokens, tokens, tokens, token_bias))
        q = b1.norm2(q + _tokens_to_image(b1.cross_attn_token_to_image, q + tokens, st["k1"], st["v1"]))
        q = b1.norm3(q + b1.mlp(q))
        i2t = b1.cross_attn_image_to_token
        p1 = _image_to_tokens_probs(i2t, q + tokens, st["q1"], token_bias)  # (B, H*T, n)
        vp1, u1 = _values(i2t, q)
        u1c = _centred(u1)
        cross1 = _sum_k(p1 * (vp1 @ st["s0c_wo1"]).flatten(1, 2))
        a1 = torch.rsqrt(st["s0c_sq"] + (2 / c) * cross1 + _quadratic(p1, u1c) / c + b1.norm4.eps)  # (B, 1, n)
        low1 = (a1 * p1, u1c * b1.norm4.weight)  # keys1 = a1 * s1 + low1 + be1

        q2 = b2.norm1(q + b2.self_attn(q + tokens, q + tokens, q, token_bias))
        t2i = b2.cross_attn_token_to_image
        bias_v = F.linear(b1.norm4.bias, t2i.v_proj.weight, t2i.v_proj.bias)
        q2 = b2.norm2(q2 + _tokens_to_image(t2i, q2 + tokens, st["s1_k2"], st["s1_v2"], a1, st["pe_k2"], bias_v, low1))
        q2 = b2.norm3(q2 + b2.mlp(q2))
        i2t2 = b2.cross_attn_image_to_token
        p2 = _image_to_tokens_probs(i2t2, q2 + tokens, st["s1_q2"], token_bias, a1, st["pe_q2"], low1)
        vp2, u2 = _values(i2t2, q2)
        scale2, low2 = self._second_norm(st, a1, low1, p2, vp1, u1, vp2, u2)

        final = dec.transformer.final_attn_token_to_image
        bias_v = F.linear(b2.norm4.bias, final.v_proj.weight, final.v_proj.bias)
        qf = _tokens_to_image(final, q2 + tokens, st["s2_kf"], st["s2_vf"], scale2, st["pe_kf"], bias_v, low2)
        qf = dec.transformer.norm_final_attn(q2 + qf)
        hyper_in = torch.stack([mlp(qf[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        return dec.iou_prediction_head(qf[:, 0]), (scale2, *low2, hyper_in)

    def _second_norm(self, st: dict, a1: torch.Tensor, low1: LowRank, p2: torch.Tensor, vp1, u1, vp2, u2) -> tuple[torch.Tensor, LowRank]:
        """Block 2's last LayerNorm of X2 = a1 * s1 + R2 W2, R2 = [a1 p1, p2], W2 = [u1c g1, u2 (+ be1 + bo2)].

        The constant be1 + bo2 needs no row of its own: head 0's weights p2[0, t] sum to one over t,
        so it is added to head 0's rows of u2. That keeps the rank at 2 * heads * T, a multiple of 16
        (the shape the AMX / brgemm matmul kernels want). Returns (scale (B, 1, n), low rank) with
        keys2 = scale * s2 + R W + be2.
        """
        b1, b2 = self.mask_decoder.transformer.layers
        c, t = u1.shape[-1], u2.shape[1] // self.num_heads
        const = b1.norm4.bias + b2.cross_attn_image_to_token.out_proj.bias
        r2 = torch.cat([low1[0], p2], dim=1)
        w2c = _centred(torch.cat([low1[1], u2[:, :t] + const, u2[:, t:]], dim=1))
        # s1c . rows of W2 (s1c rows sum to zero, so centring W2 changes nothing here)
        cross_u1 = (vp1 @ st["s1cg_wo1"]).flatten(1, 2) - u1.mean(-1, keepdim=True) * st["s1cg_sum"]
        cross_u2 = (vp2 @ st["s1c_wo2"]).flatten(1, 2)
        cross2 = torch.cat([cross_u1, cross_u2[:, :t] + st["s1c_c2"], cross_u2[:, t:]], dim=1)
        var2 = a1.square() * st["s1c_sq"] + (2 / c) * a1 * _sum_k(r2 * cross2) + _quadratic(r2, w2c) / c
        a2 = torch.rsqrt(var2 + b2.norm4.eps)
        return a1 * a2, (a2 * r2, w2c * b2.norm4.weight)

    def masks(self, s2_up: torch.Tensor, scale: torch.Tensor, r: torch.Tensor, w: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """Low-res logits (B, 4, 4h, 4w) from the parts ``scores`` returned and the state's ``s2_up``.

        The upscaling's first transposed convolution is a per-token linear map, so it splits like a
        projection; the rest runs as in ``MaskDecoder``.
        """
        dec = self.mask_decoder
        up1_weight, up1_bias = MaskDecoder.as_linear(dec.output_upscaling[0])
        const = F.linear(dec.transformer.layers[1].norm4.bias, up1_weight, up1_bias)
        y = scale.transpose(1, 2) * s2_up + r.transpose(1, 2) @ F.linear(w, up1_weight) + const  # (B, n, 4 * C/4)
        h, w_ = self.prompt_encoder.image_embedding_size
        return dec.masks_from_upscaled(y, hyper_in, h, w_)


def _row(x: torch.Tensor) -> torch.Tensor:
    """(1, n) -> (1, 1, n)."""
    return x.unsqueeze(1)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _sum_k(x: torch.Tensor) -> torch.Tensor:
    """(B, k, n) -> (B, 1, n)."""
    return x.sum(1, keepdim=True)


def _quadratic(r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-token squared norm of R W without forming it: R^T (B, k, n), W (B, k, C) -> (B, 1, n)."""
    return _sum_k(((w @ w.transpose(1, 2)) @ r) * r)


def _token_heads(attn: Attention, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """(B, T, C) tokens through a projection, as heads (B, H, T, d)."""
    return proj(x).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)


def _values(attn: Attention, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value heads (B, H, T, d) of the tokens and their output-projected rows U (B, H*T, C)."""
    vp = _token_heads(attn, tokens, attn.v_proj)
    out_weight = attn.out_proj.weight.unflatten(1, (attn.num_heads, -1)).permute(1, 2, 0)  # (H, d, C)
    return vp, (vp @ out_weight).flatten(1, 2)


def _logits(
    attn: Attention, heads: torch.Tensor, image: torch.Tensor, scale, const: torch.Tensor | None, low: LowRank | None, weight: torch.Tensor
) -> torch.Tensor:
    """Per-head logits (B, H, T, n) of token vectors against image-side ``scale * image + const + R W weight^T``."""
    logits = heads @ image
    if scale is not None:
        logits = scale.unsqueeze(1) * logits
    if const is not None:
        logits = logits + heads @ const
    if low is not None:
        r, w = low
        projected = F.linear(w, weight).unflatten(-1, (attn.num_heads, -1)).permute(0, 2, 3, 1)  # (B, H, d, k)
        logits = logits + ((heads @ projected).flatten(1, 2) @ r).reshape(logits.shape)
    return logits


def _tokens_to_image(
    attn: Attention,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: torch.Tensor | None = None,
    keys_const: torch.Tensor | None = None,
    values_const: torch.Tensor | None = None,
    low: LowRank | None = None,
) -> torch.Tensor:
    """Tokens q (B, T, C) attend to image tokens given by their per-image projections.

    Keys are ``scale * keys + keys_const + R W Wk^T`` (``keys`` (1, H, d, n) with the bias when
    there is no scale); values likewise, with ``values_const`` (D,) added after pooling because
    attention weights sum to one.
    """
    heads_q = _token_heads(attn, q, attn.q_proj) / attn.head_scale  # (B, H, T, d)
    p = torch.softmax(_logits(attn, heads_q, keys, scale, keys_const, low, attn.k_proj.weight), dim=-1)  # (B, H, T, n)
    pooled = (p if scale is None else p * scale.unsqueeze(1)) @ values  # (B, H, T, d)
    if low is not None:
        r, w = low
        b, h, t, n = p.shape
        pooled_r = (p.reshape(b, h * t, n) @ r.transpose(1, 2)).reshape(b, h, t, -1)  # (B, H, T, k)
        pooled = pooled + pooled_r @ F.linear(w, attn.v_proj.weight).unflatten(-1, (h, -1)).transpose(1, 2)
    if values_const is not None:
        pooled = pooled + values_const.reshape(attn.num_heads, 1, -1)
    return attn.out_proj(pooled.transpose(1, 2).flatten(2))


def _image_to_tokens_probs(
    attn: Attention,
    k: torch.Tensor,
    queries: torch.Tensor,
    token_bias: torch.Tensor,
    scale: torch.Tensor | None = None,
    queries_const: torch.Tensor | None = None,
    low: LowRank | None = None,
) -> torch.Tensor:
    """Attention weights (B, H*T, n) of image tokens over the tokens k (B, T, C), softmax per head over T."""
    heads_k = _token_heads(attn, k, attn.k_proj) / attn.head_scale
    logits = _logits(attn, heads_k, queries, scale, queries_const, low, attn.q_proj.weight)
    return torch.softmax(logits + token_bias[:, None, :, None], dim=2).flatten(1, 2)
