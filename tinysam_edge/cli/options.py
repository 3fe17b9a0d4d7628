"""What every subcommand shares: the one-line-error parser, validated option types, the model options and the output guard."""

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import weights
from ..devices import PRECISIONS
from ..errors import TinySamError
from ..files import check_writable
from ..image import IMAGE_SUFFIXES
from ..masks import FLAVOURS

if TYPE_CHECKING:
    from ..predictor import PredictorBase


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line, and whose values may start with a minus (``--point -1,5``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse reads "-1,5" as an option unless it matches this private pattern; widen it to number lists
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: Largest integer any option takes: the values reach C code (OpenVINO, OpenCV) as 32-bit ints.
INT_MAX = 2**31 - 1


def number(kind: type, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float), finite, within ``[low, high]`` (either bound optional; ints stop at INT_MAX)."""
    if kind is int and high is None:
        high = INT_MAX

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = number(int, 1)
NON_NEGATIVE_INT = number(int, 0)
UNIT = number(float, 0.0, 1.0)


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{what} must be {'/'.join(str(c) for c in count)} comma-separated finite numbers, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 positive, 0 negative; default 1)."""
    values = _floats(text, (2, 3), "--point X,Y[,LABEL]")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--point label must be 1 (positive) or 0 (negative), got {text!r}")
    return values[0], values[1], int(label)


def parse_box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1`` in original-image pixels."""
    return _floats(text, (4,), "--box X0,Y0,X1,Y1")


class Once(argparse.Action):
    """Store a value, refusing a second occurrence of the option (instead of the last one silently winning)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice; it takes one value")
        setattr(namespace, self.dest, values)


def add_prompt_options(parser: argparse.ArgumentParser, persistent: bool = False) -> None:
    """``--point`` (repeatable) and one ``--box``."""
    kind = "persistent " if persistent else ""
    parser.add_argument(
        "--point",
        type=parse_point,
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help=f"{kind}point prompt; label 1 positive (default), 0 negative; repeatable",
    )
    parser.add_argument("--box", type=parse_box, action=Once, metavar="X0,Y0,X1,Y1", help=f"{kind}box prompt in pixels")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` of the OpenVINO runtime."""
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU or AUTO (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, help="inference precision (default: f32 on CPU/GPU)")


def add_model_options(parser: argparse.ArgumentParser, backends: bool = True) -> None:
    """Where the model comes from (checkpoint or model dir), device and precision, and ``--overwrite``."""
    parser.add_argument("--checkpoint", help=f"checkpoint file or registry name (default: {weights.DEFAULT_WEIGHTS}; not with --model-dir)")
    parser.add_argument("--model-dir", type=Path, help="exported OpenVINO model dir (default: export --checkpoint once into the cache)")
    add_device_options(parser)
    if backends:
        parser.add_argument("--backend", choices=["openvino", "torch"], default="openvino", help="inference backend (default: %(default)s)")
        parser.add_argument(
            "--flavour", choices=FLAVOURS, help="single-mask rule (default: from the weights; tinysam; not with --model-dir)"
        )
        parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled module (can run code)")
    add_overwrite(parser)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")


#: Everything-mode filter thresholds (SAM's / TinySAM's defaults); the options default to None so a command can tell "given".
THRESHOLDS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "high_score_thresh": 8.5}


def add_everything_thresholds(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """SAM's filter thresholds of the everything mode; ``prefix`` goes in front of each help text."""
    helps = {
        "pred_iou_thresh": (number(float), "keep masks whose predicted IoU passes"),
        "stability_score_thresh": (UNIT, "keep masks this stable, 0..1"),
        "high_score_thresh": (number(float), "hierarchical coverage logit threshold"),
    }
    for name, (kind, text) in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{prefix}{text} (default: {THRESHOLDS[name]})")


def thresholds(args: argparse.Namespace) -> dict[str, float]:
    """The everything-mode thresholds of ``add_everything_thresholds`` (defaults filled in) as generator keyword arguments."""
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in THRESHOLDS.items()}


def refuse_unused(args: argparse.Namespace, names: Sequence[str], reason: str) -> None:
    """Raise TinySamError naming the options of ``names`` that were given (not None) where they would be ignored."""
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) not in (None, False)]
    if given:
        raise TinySamError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} ignored {reason}; leave {'it' if len(given) == 1 else 'them'} out"
        )


def resolve_path(path: Path | str) -> Path:
    """``path`` with symlinks resolved; a symlink loop is a one-line TinySamError."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise TinySamError(f"cannot resolve {path}: {getattr(exc, 'strerror', None) or 'symlink loop'}") from exc


def _clashes(target: Path, inputs: Sequence[Path | str | None], holds: bool = False) -> Path | None:
    """The first input that ``target`` is (symlinks resolved, hard links compared by inode), or with ``holds`` is a folder of."""
    resolved = resolve_path(target)
    for source in (Path(p) for p in inputs if p is not None):
        real = resolve_path(source)
        if real == resolved or (holds and resolved in real.parents):
            return source
        if target.exists() and source.exists() and os.path.samefile(target, source):
            return source
    return None


def check_output(
    path: Path | None, overwrite: bool, inputs: Sequence[Path | str | None], suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> None:
    """Refuse an output file with the wrong type, one that is an input, a folder, not writable, or existing without ``overwrite``.

    Every command calls this on every output file before any slow work; ``--overwrite`` never lets
    an output replace an input.
    """
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise TinySamError(f"{path}: unsupported output type {path.suffix!r}; use one of {', '.join(suffixes)}")
    clash = _clashes(path, inputs)
    if clash is not None:
        raise TinySamError(f"{path} is the input {clash}; refusing to overwrite an input")
    if path.is_dir():
        raise TinySamError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise TinySamError(f"{path} exists; pass --overwrite to replace it")
    check_writable(path)


def check_output_dir(path: Path, inputs: Sequence[Path | str | None], replaced: bool = False) -> None:
    """Refuse an output folder that is an input, is a file, or cannot be created.

    ``replaced``: the command replaces the folder as a whole (a model dir with ``--overwrite``), so it
    must not hold an input either. Files written inside a folder are checked with ``check_output``.
    """
    clash = _clashes(path, inputs, holds=replaced)
    if clash is not None:
        raise TinySamError(f"output folder {path} is or holds the input {clash}; choose another folder")
    if path.exists() and not path.is_dir():
        raise TinySamError(f"{path} is a file, not a folder")
    check_writable(path)


def log(message: str) -> None:
    """Progress and notes go to stderr, results to stdout."""
    print(message, file=sys.stderr)


def describe(predictor: "PredictorBase") -> str:
    """One line naming the backend, device and precision a predictor runs on."""
    if hasattr(predictor, "device_used"):
        return f"OpenVINO on {predictor.device_used}, {predictor.precision_used}"
    return "torch eager, f32"


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
    return export.cached_model_dir(
        checkpoint, flavour=getattr(args, "flavour", None), trust_pickle=getattr(args, "trust_pickle", False), log=log
    )


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
