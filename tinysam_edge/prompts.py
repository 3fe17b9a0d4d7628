"""Prompt validation and the decoder's point/label encoding, shared by every backend."""

from dataclasses import dataclass

import numpy as np

from .transforms import apply_boxes, apply_coords

LOW_RES_SIZE = 256


@dataclass(frozen=True)
class Prompts:
    """Validated prompts in original-image pixels."""

    point_coords: np.ndarray | None  # (N, 2) float64, (x, y)
    point_labels: np.ndarray | None  # (N,) int64, 1 positive / 0 negative
    box: np.ndarray | None  # (4,) float64, XYXY
    mask_input: np.ndarray | None  # (1, 256, 256) float32 low-res logits


def _finite_array(value: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_inside(xy: np.ndarray, name: str, original_size: tuple[int, int]) -> None:
    h, w = original_size
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        x, y = xy[np.argmax(bad)]
        raise ValueError(f"{name} ({x:g}, {y:g}) lies outside the {w}x{h} image (x in [0, {w}], y in [0, {h}])")


def check_prompts(
    point_coords: object,
    point_labels: object,
    box: object,
    mask_input: object,
    original_size: tuple[int, int],
) -> Prompts:
    """Validate user prompts against an image of ``original_size`` (h, w); raise ValueError on bad input."""
    coords = labels = box_arr = mask = None
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords = _finite_array(point_coords, "point_coords")
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
            raise ValueError(f"point_coords must have shape (N, 2) with N >= 1, got {coords.shape}")
        raw_labels = _finite_array(point_labels, "point_labels")
        if raw_labels.shape != (coords.shape[0],):
            raise ValueError(f"point_labels must have shape ({coords.shape[0]},) to match point_coords, got {raw_labels.shape}")
        if not np.all(np.isin(raw_labels, (0, 1))):
            raise ValueError(f"point_labels must be 1 (positive) or 0 (negative), got {np.unique(raw_labels).tolist()}")
        labels = raw_labels.astype(np.int64)
        _check_inside(coords, "point", original_size)
    if box is not None:
        box_arr = _finite_array(box, "box")
        if box_arr.shape not in ((4,), (1, 4)):
            raise ValueError(f"box must have shape (4,) as x0, y0, x1, y1, got {box_arr.shape}")
        box_arr = box_arr.reshape(4)
        if box_arr[2] < box_arr[0] or box_arr[3] < box_arr[1]:
            raise ValueError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {box_arr.tolist()}")
        _check_inside(box_arr.reshape(2, 2), "box corner", original_size)
    if mask_input is not None:
        mask = _finite_array(mask_input, "mask_input").astype(np.float32)
        if mask.shape == (LOW_RES_SIZE, LOW_RES_SIZE):
            mask = mask[None]
        if mask.shape != (1, LOW_RES_SIZE, LOW_RES_SIZE):
            raise ValueError(f"mask_input must be (1, 256, 256) low-res logits from an earlier predict, got {mask.shape}")
    if coords is None and box_arr is None and mask is None:
        raise ValueError("give at least one prompt: point_coords/point_labels, box or mask_input")
    return Prompts(coords, labels, box_arr, mask)


def encode_prompts(prompts: Prompts, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (1, N, 2) float32 coords in the 1024-input frame and (1, N) float32 labels.

    Points keep labels 0/1, box corners get 2/3. Points without a box get a padding point
    (label -1) appended, exactly as SAM's prompt encoder does.
    """
    coords = [np.zeros((0, 2))]
    labels = [np.zeros(0)]
    if prompts.point_coords is not None:
        coords.append(apply_coords(prompts.point_coords, original_size))
        labels.append(prompts.point_labels.astype(np.float64))
        if prompts.box is None:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1.0]))
    if prompts.box is not None:
        coords.append(apply_boxes(prompts.box, original_size).reshape(2, 2))
        labels.append(np.array([2.0, 3.0]))
    return np.concatenate(coords)[None].astype(np.float32), np.concatenate(labels)[None].astype(np.float32)
