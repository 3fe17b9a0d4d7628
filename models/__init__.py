"""PyTorch side of tinysam-edge: the SAM-family networks, checkpoint IO and the torch predictor."""

from .build_sam import build_sam, infer_model_name, load_weights, read_state_dict, sam_model_registry, save_checkpoint
from .modeling import Sam
from .predictor import TorchPredictor

__all__ = [
    "Sam",
    "TorchPredictor",
    "build_sam",
    "infer_model_name",
    "load_weights",
    "read_state_dict",
    "sam_model_registry",
    "save_checkpoint",
]
