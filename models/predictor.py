"""SamPredictor-style predictor running the PyTorch model (the reference every other backend is checked against)."""

import numpy as np
import torch

from tinysam_edge.predictor import PredictorBase

from .modeling import CachedMaskDecoder, Sam


class TorchPredictor(PredictorBase):
    """``set_image`` / ``get_image_embedding`` / ``predict`` with the eager PyTorch model on its device."""

    def __init__(self, model: Sam) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self._cached = CachedMaskDecoder(model.prompt_encoder, model.mask_decoder).to(self.device).eval()
        super().__init__(model.flavour)

    def describe(self) -> str:
        """One line naming the backend, device and precision this predictor runs on."""
        return "torch eager, f32" if self.device.type == "cpu" else f"torch eager on {self.device}, f32"

    @torch.inference_mode()
    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        return self.model.image_encoder(torch.from_numpy(input_tensor).to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def _decode(
        self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        def to_torch(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device)

        mask = None if mask_input is None else to_torch(mask_input)
        low_res, iou = self.model.decode(to_torch(embedding), to_torch(coords), to_torch(labels), mask)
        return low_res.cpu().numpy(), iou.cpu().numpy()

    @torch.inference_mode()
    def _image_state(self, embedding: np.ndarray) -> tuple[torch.Tensor, ...]:
        return self._cached.image_state(torch.from_numpy(embedding).to(self.device))

    @torch.inference_mode()
    def _decode_cached(self, state, coords: np.ndarray, labels: np.ndarray, exact_shape: bool = True) -> tuple[np.ndarray, np.ndarray]:
        low_res, iou = self._cached(state, torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device))
        return low_res.cpu().numpy(), iou.cpu().numpy()

    @torch.inference_mode()
    def _score_cached(self, state, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        _, iou = self._cached(state, torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device), with_masks=False)
        return iou.cpu().numpy()
