"""The model behind a command: a model dir (or a checkpoint exported to one once), and the predictor on it."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import weights
from ..errors import TinySamError
from .outputs import log

if TYPE_CHECKING:
    from ..predictor import PredictorBase


def torch_side(what: str):
    """The torch-side ``models`` and ``quantize.export`` modules, or one line saying which extra is missing."""
    try:
        from .. import models
        from ..quantize import export
    except ImportError as exc:
        raise TinySamError(f"{what} needs PyTorch ({exc}); install it with: pip install 'tinysam-edge[convert]'") from exc
    return models, export


def model_dir_for(args: argparse.Namespace) -> Path:
    """``--model-dir``, or ``--checkpoint`` (default weights) exported to IR once into the cache."""
    if args.model_dir is not None:
        if args.checkpoint is not None:
            raise TinySamError("give --checkpoint or --model-dir, not both (a model dir already holds its weights)")
        if getattr(args, "flavour", None) is not None:
            raise TinySamError("--flavour applies to --checkpoint; a model dir's flavour is fixed at export (export --flavour)")
        return args.model_dir
    _, export = torch_side(f"exporting {args.checkpoint or weights.DEFAULT_WEIGHTS} to OpenVINO IR (or pass --model-dir)")
    checkpoint = args.checkpoint or weights.DEFAULT_WEIGHTS
    model_dir = export.cached_model_dir(
        checkpoint, flavour=getattr(args, "flavour", None), trust_pickle=getattr(args, "trust_pickle", False), log=log
    )
    log(f"model dir: {model_dir} (of {checkpoint}; 'tinysam-edge weights list' shows every cached one)")
    return model_dir


def make_predictor(args: argparse.Namespace, **runtime: object) -> "PredictorBase":
    """The predictor the common model options ask for (exporting a checkpoint to IR once if needed).

    ``runtime``: further ``Predictor`` arguments for the OpenVINO backend (e.g. ``specialized_graphs``).
    """
    if getattr(args, "backend", "openvino") == "torch":
        if args.model_dir is not None:
            raise TinySamError("--model-dir is an OpenVINO model; use --checkpoint with --backend torch")
        if args.device.upper() != "CPU" or args.precision is not None:
            raise TinySamError("--device and --precision choose the OpenVINO runtime; --backend torch runs f32 on the CPU")
        models, _ = torch_side("the torch backend")
        sam = models.build_sam(
            "auto", checkpoint=args.checkpoint or weights.DEFAULT_WEIGHTS, flavour=args.flavour, trust_pickle=args.trust_pickle
        )
        return models.TorchPredictor(sam)
    from ..predictor import Predictor

    return Predictor(model_dir_for(args), device=args.device, precision=args.precision, **runtime)
