"""The options every subcommand shares: the one-line-error parser, validated option types, model, prompt and everything-mode options."""

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import weights
from ..devices import PRECISIONS
from ..errors import TinySamError
from ..everything_settings import LIMITS, MODES, USER_FIELDS, EverythingSettings
from ..masks import FLAVOURS


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


#: Help of the everything-mode options (``USER_FIELDS``); their types, limits and defaults come from ``EverythingSettings``.
EVERYTHING_OPTIONS = {
    "points_per_side": "full grid density (hierarchical: at least 4)",
    "points_per_batch": "prompts per decoder call",
    "pred_iou_thresh": "keep masks whose predicted IoU passes",
    "stability_score_thresh": "keep masks this stable",
    "high_score_thresh": "hierarchical coverage logit threshold",
    "box_nms_thresh": "box NMS IoU threshold",
    "min_mask_region_area": "fill holes / drop islands smaller than this, 0 = off",
}
#: The filter thresholds (``bench`` and ``compare`` take only these).
THRESHOLDS = ("pred_iou_thresh", "stability_score_thresh", "high_score_thresh")
_FIELD_NAMES = re.compile(r"\b(" + "|".join(USER_FIELDS) + r")\b")


def add_everything_options(parser: argparse.ArgumentParser, prefix: str = "", names: Sequence[str] = USER_FIELDS) -> None:
    """Everything-mode options (default None, so a command can tell "given"); ``prefix`` goes in front of each help text."""
    if "mode" in names:
        parser.add_argument(
            "--mode", choices=MODES, help=f"{prefix}TinySAM's hierarchical or SAM's grid (default: {EverythingSettings.mode})"
        )
    for name in (n for n in names if n != "mode"):
        kind, low, high = LIMITS[name]
        default, span = getattr(EverythingSettings, name), f", {low}..{high}" if high is not None else ""
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=number(kind, low, high),
            help=f"{prefix}{EVERYTHING_OPTIONS[name]}{span} (default: {default})",
        )


def everything_options(args: argparse.Namespace) -> dict[str, float]:
    """The everything-mode options a parser has (``mode`` aside), defaults filled in, as generator keyword arguments."""
    names = [name for name in USER_FIELDS if name != "mode" and hasattr(args, name)]
    return {name: getattr(EverythingSettings, name) if getattr(args, name) is None else getattr(args, name) for name in names}


def everything_settings(args: argparse.Namespace) -> EverythingSettings:
    """The settings ``add_everything_options`` asked for; options not given keep the defaults. Ranges were checked while parsing."""
    if args.mode == "grid":
        refuse_unused(args, ["high_score_thresh"], "by --mode grid (it is the hierarchical coverage threshold)")
    given = {name: getattr(args, name) for name in USER_FIELDS if getattr(args, name) is not None}
    try:
        return EverythingSettings(**given)
    except ValueError as exc:  # the settings name fields; say the options instead
        raise TinySamError(_FIELD_NAMES.sub(lambda m: "--" + m[0].replace("_", "-"), str(exc))) from None


def refuse_unused(args: argparse.Namespace, names: Sequence[str], reason: str) -> None:
    """Raise TinySamError naming the options of ``names`` that were given (not None) where they would be ignored."""
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) not in (None, False)]
    if given:
        raise TinySamError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} ignored {reason}; leave {'it' if len(given) == 1 else 'them'} out"
        )
