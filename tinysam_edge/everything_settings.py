"""Everything-mode settings: the one place that holds their defaults and limits.

The Python API, the CLI (``everything``, ``label``), the service and the demos build an
``EverythingSettings`` and hand it to ``mask_generator.make_generator``; the CLI's option types and
the service's 422 answers come from the checks here.
"""

import math
import reprlib
from dataclasses import asdict, dataclass

import numpy as np

MODES = ("hierarchical", "grid")
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
#: The hierarchical first stage samples a (points_per_side / 4)^2 grid, so it needs 4 or more.
HIERARCHICAL_MIN_POINTS_PER_SIDE = 4
#: Densest grid: 64 x 64 = 4096 prompts, 4x SAM's default 32 and the densest SAM 2 shows. Cost and
#: kept masks grow with the square (a hierarchical run at 64 takes about 4x one at 32; at 256 it
#: would take about 64x, tens of minutes on 2 cores), and a service worker runs a job to its end.
MAX_POINTS_PER_SIDE = 64
#: Most prompts per decoder call: the decoder returns (P, 4, 256, 256) float32 logits, 256 MiB at 256.
MAX_POINTS_PER_BATCH = 256
#: Largest area option: areas reach OpenCV as 32-bit ints.
MAX_AREA = 2**31 - 1

#: The fields a user sets: the CLI's options and the service's request fields (the rest is for API callers).
USER_FIELDS = (
    "mode",
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "high_score_thresh",
    "box_nms_thresh",
    "min_mask_region_area",
)
#: Numeric fields: name -> (int or float, low, high); a None bound means any finite number.
LIMITS: dict[str, tuple[type, float | None, float | None]] = {
    "points_per_side": (int, 1, MAX_POINTS_PER_SIDE),
    "points_per_batch": (int, 1, MAX_POINTS_PER_BATCH),
    "pred_iou_thresh": (float, None, None),
    "stability_score_thresh": (float, 0.0, 1.0),
    "stability_score_offset": (float, None, None),
    "high_score_thresh": (float, None, None),
    "box_nms_thresh": (float, 0.0, 1.0),
    "min_mask_region_area": (int, 0, MAX_AREA),
}


@dataclass(frozen=True)
class EverythingSettings:
    """What an everything-mode run does; every field is checked on construction (``ValueError``, one line).

    ``mode``: TinySAM's ``"hierarchical"`` generator or SAM's ``"grid"``. The thresholds are SAM's
    (``pred_iou_thresh`` on the predicted IoU, ``stability_score_thresh`` on the IoU of the masks at
    logit +/- ``stability_score_offset``, ``box_nms_thresh``); ``high_score_thresh`` is the logit above
    which a hierarchical first-stage mask covers a pixel (unused by the grid). ``min_mask_region_area``
    > 0 fills holes and drops islands smaller than it. ``output_mode``: how ``segmentation`` is returned.
    """

    mode: str = "hierarchical"
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    high_score_thresh: float = 8.5
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("output_mode", OUTPUT_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {reprlib.repr(getattr(self, name))}")
        for name, (kind, low, high) in LIMITS.items():
            object.__setattr__(self, name, _checked(name, getattr(self, name), kind, low, high))
        if self.mode == "hierarchical" and self.points_per_side < HIERARCHICAL_MIN_POINTS_PER_SIDE:
            raise ValueError(f"mode hierarchical needs points_per_side >= {HIERARCHICAL_MIN_POINTS_PER_SIDE}, got {self.points_per_side}")
        if self.output_mode == "coco_rle":
            try:
                from pycocotools import mask as _  # noqa: F401
            except ImportError as exc:
                raise ImportError("output_mode='coco_rle' needs pycocotools: pip install 'tinysam-edge[eval]'") from exc

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (``EverythingSettings(**d)`` rebuilds it)."""
        return asdict(self)


def _checked(name: str, value: object, kind: type, low: float | None, high: float | None) -> int | float:
    """``value`` as a plain int or float if it is one (bools are not) and finite within ``[low, high]``; else ValueError."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    try:
        number = float(value) if is_int or isinstance(value, (float, np.floating)) else math.nan
    except OverflowError:  # an integer of hundreds of digits
        number = math.nan
    if (kind is int and not is_int) or not math.isfinite(number) or (low is not None and not low <= number <= high):
        what = "an integer" if kind is int else "a number" if low is not None else "a finite number"
        span = f" in {low}..{high}" if low is not None else ""
        raise ValueError(f"{name} must be {what}{span}, got {reprlib.repr(value)}")
    return kind(value)
