"""SAM's prompt encoder: random-Fourier point embeddings and the dense mask embedding."""

import math

import torch
from torch import nn

from tinysam_edge.prompts import LABEL_EMPTY, LABEL_PAD

from .common import LayerNorm2d

#: Attention-logit bias that hides empty slots (exp underflows to exactly 0, and it fits in fp16).
EMPTY_SLOT_BIAS = -1e4


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of normalised (x, y) coordinates through a fixed Gaussian matrix."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense positional encoding of an (h, w) grid of cell centres, shaped (C, h, w)."""
        h, w = size
        grid = torch.ones((h, w), dtype=torch.float32, device=self.positional_encoding_gaussian_matrix.device)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode (B, N, 2) pixel coordinates of an image of size (h, w)."""
        x = coords[..., 0] / image_size[1]
        y = coords[..., 1] / image_size[0]
        return self._pe_encoding(torch.stack([x, y], dim=-1).float())


class PromptEncoder(nn.Module):
    """Embeds points/boxes into sparse tokens and a low-res mask into a dense embedding."""

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Learned type embeddings: negative point, positive point, box top-left, box bottom-right.
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, 64, 64)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Embed (B, N, 2) coordinates in the 1024-input frame with (B, N) labels.

        Labels: -2 empty slot, -1 padding, 0 negative, 1 positive, 2 / 3 box top-left / bottom-right
        corner. Boxes given as two corner points embed exactly like SAM's box path, so one graph
        serves both.
        """
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels[..., None]
        is_pad = labels == LABEL_PAD
        embedding = torch.where(is_pad, torch.zeros_like(pe), pe)
        embedding = embedding + is_pad * self.not_a_point_embed.weight
        for label, type_embedding in enumerate(self.point_embeddings):
            embedding = embedding + (labels == label) * type_embedding.weight
        return embedding

    @staticmethod
    def slot_bias(labels: torch.Tensor) -> torch.Tensor:
        """(B, N) attention bias: 0 for prompt tokens, ``EMPTY_SLOT_BIAS`` for empty slots."""
        return torch.where(labels == LABEL_EMPTY, EMPTY_SLOT_BIAS, 0.0).to(torch.float32)

    def embed_mask(self, mask_input: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Dense embedding (B, C, 64, 64) of (B, 1, 256, 256) mask logits, or the no-mask embedding."""
        if mask_input is not None:
            return self.mask_downscaling(mask_input)
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, h, w)
