"""Request bodies -> validated prompt and everything-mode arguments; every refusal is an ``ApiError`` 422 with one line."""

from dataclasses import dataclass

import numpy as np

from ..everything_settings import USER_FIELDS, EverythingSettings
from ..prompts import check_prompts
from .errors import ApiError

#: Most points one predict request may carry (the decoder's cost grows with them).
MAX_POINTS = 64


@dataclass(frozen=True)
class PromptRequest:
    """Checked prompts in original-image pixels: points (N, 2) + labels (N,) and/or a box (4,) XYXY."""

    coords: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    multimask_output: bool


def _unknown(body: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise ApiError(422, f"unknown field(s) {', '.join(extra)}; expected {', '.join(allowed)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: object, name: str, shape: str) -> np.ndarray:
    flat = value if isinstance(value, list) else None
    if flat and all(isinstance(row, list) for row in flat):
        flat = [v for row in flat for v in row]
    if not flat or not all(_is_number(v) for v in flat):
        raise ApiError(422, f"{name} must be {shape} of numbers")
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError:  # an integer of hundreds of digits
        raise ApiError(422, f"{name} must be {shape} of numbers within the float range") from None
    except ValueError:
        raise ApiError(422, f"{name} must be {shape} of numbers (rows of equal length)") from None


def parse_prompts(body: dict, size_hw: tuple[int, int]) -> PromptRequest:
    """``{"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1] | null, "multimask_output": bool}``."""
    _unknown(body, ("points", "labels", "box", "multimask_output"))
    points, labels, box = body.get("points") or None, body.get("labels") or None, body.get("box")
    multimask = body.get("multimask_output", False)
    if not isinstance(multimask, bool):
        raise ApiError(422, "multimask_output must be true or false")
    if points is None and box is None:
        raise ApiError(422, "give at least one point (points + labels) or a box")
    coords = labels_arr = box_arr = None
    if points is not None:
        coords = _numbers(points, "points", "a list of [x, y] pairs")
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) > MAX_POINTS:
            raise ApiError(422, f"points must be 1..{MAX_POINTS} [x, y] pairs")
        if not isinstance(labels, list) or len(labels) != len(coords) or any(v not in (0, 1) or isinstance(v, bool) for v in labels):
            raise ApiError(422, f"labels must be a list of {len(coords)} values, each 1 (positive) or 0 (negative)")
        labels_arr = np.array(labels, dtype=np.int64)
    elif labels is not None:
        raise ApiError(422, "labels given without points")
    if box is not None:
        box_arr = _numbers(box, "box", "[x0, y0, x1, y1]")
        if box_arr.shape != (4,):
            raise ApiError(422, "box must be [x0, y0, x1, y1]")
    try:
        check_prompts(coords, labels_arr, box_arr, None, size_hw)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return PromptRequest(coords, labels_arr, box_arr, multimask)


def parse_everything(body: dict) -> EverythingSettings:
    """``{"mode": "hierarchical" | "grid", <the other USER_FIELDS>}``, each optional -> settings with COCO RLE output.

    Defaults and limits are ``EverythingSettings``'; what it refuses is a 422 with its message.
    """
    _unknown(body, USER_FIELDS)
    try:
        return EverythingSettings(**body, output_mode="coco_rle")
    except ValueError as exc:  # an integer of hundreds of digits too: the settings refuse it as not finite
        raise ApiError(422, str(exc)) from None
