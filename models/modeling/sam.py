"""The assembled model: image encoder, prompt encoder and mask decoder."""

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """SAM-family model. Inputs are already preprocessed by the runtime (``tinysam_edge.transforms``).

    ``flavour`` records how a caller picks the single-mask output: ``"tinysam"`` (best IoU of tokens
    1..3; TinySAM never trained token 0) or ``"sam"`` (token 0, upstream SAM / MobileSAM).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, flavour: str = "tinysam"
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.flavour = flavour

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts on one (1, 256, 64, 64) embedding.

        ``point_coords`` (B, N, 2) are in the 1024-input frame and ``point_labels`` (B, N) use
        -2 empty slot, -1 padding, 0 negative, 1 positive, 2/3 box corners. Returns all 4 tokens' low-res logits
        (B, 4, 256, 256) and IoU predictions (B, 4).
        """
        masks, iou, _ = self.decode_with_tokens(image_embeddings, point_coords, point_labels, mask_input)
        return masks, iou

    def decode_with_tokens(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode`` plus the two-way transformer's output tokens (B, 1 + 4 + N, 256), which distillation matches."""
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self.prompt_encoder.embed_mask(mask_input, 1)
        bias = self.prompt_encoder.slot_bias(point_labels)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, bias)
