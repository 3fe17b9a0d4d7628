"""Prompt validation and the decoder's point/label encoding, shared by every backend."""

from dataclasses import dataclass

import numpy as np

from .transforms import apply_boxes, apply_coords

LOW_RES_SIZE = 256
#: Decoder point labels: 0 negative, 1 positive, 2 / 3 box corners, -1 SAM's padding point, and -2 an
#: unused slot of a fixed-size prompt tensor, which the decoder masks out of attention.
LABEL_EMPTY = -2
LABEL_PAD = -1


@dataclass(frozen=True)
class Prompts:
    """Validated prompts for B prompt sets, in original-image pixels."""

    point_coords: np.ndarray | None  # (B, N, 2) float64, (x, y)
    point_labels: np.ndarray | None  # (B, N) int64: 1 positive, 0 negative (-1 padding in batches)
    boxes: np.ndarray | None  # (B, 4) float64, XYXY
    mask_input: np.ndarray | None  # (1, 256, 256) float32 low-res logits

    @property
    def batch_size(self) -> int:
        """Number of prompt sets."""
        for arr in (self.point_coords, self.boxes):
            if arr is not None:
                return arr.shape[0]
        return 1


def check_flag(value: object, name: str) -> bool:
    """``value`` as a bool; TypeError for anything else (``"no"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _finite_array(value: object, name: str, dtype: type = np.float64) -> np.ndarray:
    try:
        if np.iscomplexobj(value):  # the cast below would silently drop the imaginary part
            raise TypeError("complex")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
            arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric (real numbers), got {type(value).__name__}") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_inside(xy: np.ndarray, name: str, original_size: tuple[int, int]) -> None:
    h, w = original_size
    xy = xy.reshape(-1, 2)
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        x, y = xy[np.argmax(bad)]
        raise ValueError(f"{name} ({x:g}, {y:g}) lies outside the {w}x{h} image (x in [0, {w}], y in [0, {h}])")


def _check_points(
    point_coords: object, point_labels: object, batched: bool, original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    lead = "B, N" if batched else "N"
    coords = _finite_array(point_coords, "point_coords")
    if coords.ndim != len(lead.split(", ")) + 1 or coords.shape[-1] != 2 or coords.shape[-2] == 0:
        raise ValueError(f"point_coords must have shape ({lead}, 2) with N >= 1, got {coords.shape}")
    labels = _finite_array(point_labels, "point_labels")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords, got {labels.shape}")
    allowed = (LABEL_PAD, 0, 1) if batched else (0, 1)
    if not np.all(np.isin(labels, allowed)):
        pad = ", -1 (padding)" if batched else ""
        raise ValueError(f"point_labels must be 1 (positive) or 0 (negative){pad}, got {np.unique(labels).tolist()}")
    real = labels != LABEL_PAD
    _check_inside(coords[real], "point", original_size)
    return coords, labels.astype(np.int64)


def _check_boxes(boxes: object, batched: bool, original_size: tuple[int, int]) -> np.ndarray:
    arr = _finite_array(boxes, "box")
    if batched and (arr.ndim != 2 or arr.shape[1] != 4):
        raise ValueError(f"boxes must have shape (B, 4) as x0, y0, x1, y1, got {arr.shape}")
    if not batched:
        if arr.shape not in ((4,), (1, 4)):
            raise ValueError(f"box must have shape (4,) as x0, y0, x1, y1, got {arr.shape}")
        arr = arr.reshape(1, 4)
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        raise ValueError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {arr[np.argmax(bad)].tolist()}")
    _check_inside(arr, "box corner", original_size)
    return arr


def check_prompts(point_coords: object, point_labels: object, box: object, mask_input: object, original_size: tuple[int, int]) -> Prompts:
    """Validate one prompt set (points (N, 2) + labels (N,), box (4,), mask (1, 256, 256)); ValueError on bad input."""
    coords = labels = boxes = mask = None
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords, labels = _check_points(point_coords, point_labels, False, original_size)
        coords, labels = coords[None], labels[None]
    if box is not None:
        boxes = _check_boxes(box, False, original_size)
    if mask_input is not None:
        mask = _finite_array(mask_input, "mask_input", np.float32)
        if mask.shape == (LOW_RES_SIZE, LOW_RES_SIZE):
            mask = mask[None]
        if mask.shape != (1, LOW_RES_SIZE, LOW_RES_SIZE):
            raise ValueError(f"mask_input must be (1, 256, 256) low-res logits from an earlier predict, got {mask.shape}")
    if coords is None and boxes is None and mask is None:
        raise ValueError("give at least one prompt: point_coords/point_labels, box or mask_input")
    return Prompts(coords, labels, boxes, mask)


def check_batch_prompts(point_coords: object, point_labels: object, boxes: object, original_size: tuple[int, int]) -> Prompts:
    """Validate B prompt sets: points (B, N, 2) + labels (B, N) (-1 pads shorter sets) and/or boxes (B, 4)."""
    coords = labels = box_arr = None
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords, labels = _check_points(point_coords, point_labels, True, original_size)
    if boxes is not None:
        box_arr = _check_boxes(boxes, True, original_size)
    if coords is None and box_arr is None:
        raise ValueError("give point_coords/point_labels and/or boxes")
    if (coords if coords is not None else box_arr).shape[0] == 0:
        raise ValueError("give at least one prompt set (B >= 1); an empty batch has nothing to decode")
    if coords is not None and box_arr is not None and coords.shape[0] != box_arr.shape[0]:
        raise ValueError(f"point_coords has {coords.shape[0]} prompt sets but boxes has {box_arr.shape[0]}")
    if box_arr is None and (labels == LABEL_PAD).all(axis=1).any():
        empty = int(np.argmax((labels == LABEL_PAD).all(axis=1)))
        raise ValueError(f"prompt set {empty} has only padding points (label -1) and no box: nothing to segment")
    return Prompts(coords, labels, box_arr, None)


def encode_prompts(prompts: Prompts, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (B, N, 2) float32 coords in the 1024-input frame and (B, N) float32 labels.

    Points keep labels 0/1, box corners get 2/3. Points without a box get a padding point
    (label -1) appended, exactly as SAM's prompt encoder does. A mask alone gets one empty slot
    (label -2, masked out of attention): no sparse token at all, as in ``SamPredictor``.
    """
    b = prompts.batch_size
    coords = [np.zeros((b, 0, 2))]
    labels = [np.zeros((b, 0))]
    if prompts.point_coords is not None:
        coords.append(apply_coords(prompts.point_coords, original_size))
        labels.append(prompts.point_labels.astype(np.float64))
        if prompts.boxes is None:
            coords.append(np.zeros((b, 1, 2)))
            labels.append(np.full((b, 1), float(LABEL_PAD)))
    if prompts.boxes is not None:
        coords.append(apply_boxes(prompts.boxes, original_size).reshape(b, 2, 2))
        labels.append(np.tile([2.0, 3.0], (b, 1)))
    if prompts.point_coords is None and prompts.boxes is None:
        coords.append(np.zeros((b, 1, 2)))
        labels.append(np.full((b, 1), float(LABEL_EMPTY)))
    return np.concatenate(coords, axis=1).astype(np.float32), np.concatenate(labels, axis=1).astype(np.float32)
