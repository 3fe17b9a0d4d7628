"""SAM's mask decoder. It always computes all four mask tokens; selecting among them is the caller's job."""

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    """Plain MLP with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts 4 low-res mask logits (token 0: single-mask output, tokens 1..3: multimask) and their IoU."""

    def __init__(
        self, transformer_dim: int = 256, num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256
    ) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        sparse_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode B prompts against one image embedding (1, C, h, w).

        ``dense_prompt_embeddings`` is (M, C, h, w) with M in {1, B}; ``sparse_bias`` (B, N), 0 or
        large negative, masks prompt tokens out of attention. Returns low-res logits (B, 4, 4h, 4w),
        IoU predictions (B, 4) and the transformer's output tokens (B, 1 + 4 + N, C), which
        distillation uses.
        """
        b = sparse_prompt_embeddings.shape[0]
        _, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        # Image-side tensors stay at batch M (1 without a mask prompt) and in token layout (M, HW, C).
        src = (image_embeddings + dense_prompt_embeddings).permute(0, 2, 3, 1).reshape(-1, h * w, c)
        pos_src = image_pe.permute(0, 2, 3, 1).reshape(1, h * w, c)
        token_bias = None
        if sparse_bias is not None:
            token_bias = torch.cat([sparse_bias.new_zeros(b, output_tokens.shape[0]), sparse_bias], dim=1)

        hs, src = self.transformer(src, pos_src, tokens, token_bias)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = self._predict_masks(src, hyper_in, h, w)
        return masks, self.iou_prediction_head(iou_token_out), hs

    @staticmethod
    def as_linear(up: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (4 * out, in) and bias of a 2x2 stride-2 ConvTranspose2d seen as a per-pixel linear map."""
        weight = up.weight.permute(2, 3, 1, 0).reshape(-1, up.weight.shape[0])  # rows ordered (a, b, out)
        return weight, up.bias.repeat(4)

    def _predict_masks(self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Upscale image tokens (B, hw, C) 4x and dot them with the hypernetwork outputs (B, 4, C/8).

        A stride-2 2x2 ConvTranspose2d gives every input pixel its own 2x2 output block, i.e. it is a
        linear map C -> (2, 2, C') per token. Both upscaling steps therefore run as matmuls in token
        layout, and only the final (B, 4, 4h, 4w) logits are rearranged into an image.
        """
        return self.masks_from_upscaled(F.linear(src, *self.as_linear(self.output_upscaling[0])), hyper_in, h, w)

    def masks_from_upscaled(self, y: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The rest of ``_predict_masks`` after the first transposed convolution: (B, hw, 4 * C/4) -> (B, 4, 4h, 4w)."""
        _, norm, act1, up2, act2 = self.output_upscaling
        b, hw, _ = y.shape
        y = act1(norm.forward_channels_last(y.reshape(b, hw, 4, -1)))  # (B, hw, 2x2 block, C/4)
        z = act2(F.linear(y, *self.as_linear(up2)))  # (B, hw, 2x2 block, 2x2 block * C/8)
        masks = z.reshape(b, hw * 16, -1) @ hyper_in.transpose(1, 2)  # (B, hw * 16, tokens)
        # index order (i, j, a, b, a2, b2): pixel row 4i + 2a + a2, column 4j + 2b + b2
        masks = masks.reshape(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, -1, 4 * h, 4 * w)
