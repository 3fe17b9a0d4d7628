"""The SamPredictor-style contract (set_image / predict) on top of backend-specific encoder and decoder calls."""

from abc import ABC, abstractmethod

import numpy as np

from .image import to_rgb_uint8
from .masks import MASK_THRESHOLD, postprocess_masks, select_masks
from .prompts import check_prompts, encode_prompts
from .transforms import preprocess


class PredictorBase(ABC):
    """Shared pre/post-processing; a backend implements ``_encode`` and ``_decode``.

    Not thread-safe: it holds the current image's embedding. Use one predictor per thread.
    """

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour
        self.reset_image()

    @abstractmethod
    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        """(1, 3, 1024, 1024) float32 -> (1, 256, 64, 64) float32 image embedding."""

    @abstractmethod
    def _decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Decode (B, N, 2) coords / (B, N) labels -> all 4 tokens' logits (B, 4, 256, 256) and IoU (B, 4)."""

    def reset_image(self) -> None:
        """Forget the current image."""
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image (grayscale/RGBA are converted)."""
        rgb = to_rgb_uint8(image, image_format)
        input_tensor, input_size = preprocess(rgb)
        self.features = self._encode(input_tensor)
        self.original_size = (rgb.shape[0], rgb.shape[1])
        self.input_size = input_size

    @property
    def is_image_set(self) -> bool:
        """Whether ``set_image`` has been called."""
        return self.features is not None

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, (1, 256, 64, 64) float32."""
        if self.features is None:
            raise RuntimeError("call set_image(...) before get_image_embedding()")
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment with point (N, 2) + labels (N,), box (4,) XYXY and/or mask_input (1, 256, 256) prompts.

        Returns (masks (C, H, W) bool, or float logits with ``return_logits``; scores (C,) float32;
        low-res logits (C, 256, 256) float32) with C=3 for ``multimask_output`` and C=1 otherwise
        (see ``tinysam_edge.masks.select_masks`` for how the single mask is chosen).
        """
        if self.features is None or self.original_size is None or self.input_size is None:
            raise RuntimeError("call set_image(...) before predict(...)")
        prompts = check_prompts(point_coords, point_labels, box, mask_input, self.original_size)
        coords, labels = encode_prompts(prompts, self.original_size)
        mask = None if prompts.mask_input is None else prompts.mask_input[None]
        low_res, iou = self._decode(self.features, coords, labels, mask)
        low_res, iou = select_masks(low_res, iou, multimask_output, self.flavour)
        masks = postprocess_masks(low_res[0], self.input_size, self.original_size)
        if not return_logits:
            masks = masks > MASK_THRESHOLD
        return masks, iou[0].astype(np.float32), low_res[0].astype(np.float32)
