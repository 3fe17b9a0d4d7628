"""SamPredictor-style predictor running the PyTorch model (the reference every other backend is checked against)."""

import numpy as np
import torch

from tinysam_edge.predictor import PredictorBase

from .modeling import Sam


class TorchPredictor(PredictorBase):
    """``set_image`` / ``get_image_embedding`` / ``predict`` with the eager PyTorch model on its device."""

    def __init__(self, model: Sam) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        super().__init__(model.flavour)

    @torch.inference_mode()
    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        return self.model.image_encoder(torch.from_numpy(input_tensor).to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def _decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        def to_torch(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device)

        mask = None if mask_input is None else to_torch(mask_input)
        low_res, iou = self.model.decode(to_torch(embedding), to_torch(coords), to_torch(labels), mask)
        return low_res.cpu().numpy(), iou.cpu().numpy()
