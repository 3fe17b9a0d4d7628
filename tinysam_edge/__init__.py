"""tinysam-edge: TinySAM on Intel edge devices.

This package is the edge runtime (numpy, OpenCV, Pillow; never torch). The PyTorch side lives in
``tinysam_edge.models`` and IR export / quantization in ``tinysam_edge.quantize``.
"""

from .compiled_model import CompiledSam, load_model
from .errors import CheckpointError, DeviceError, ModelDirError, TinySamError, WeightsError
from .everything_settings import EverythingSettings
from .image import load_image, to_rgb_uint8
from .mask_generator import HierarchicalMaskGenerator, MaskGenerator, make_generator
from .predictor import Predictor, PredictorBase

__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "CompiledSam",
    "DeviceError",
    "EverythingSettings",
    "HierarchicalMaskGenerator",
    "MaskGenerator",
    "ModelDirError",
    "Predictor",
    "PredictorBase",
    "TinySamError",
    "WeightsError",
    "__version__",
    "load_image",
    "load_model",
    "make_generator",
    "to_rgb_uint8",
]
