"""Helpers of the automatic mask generators (SAM's ``utils/amg.py`` counterpart): point grids, stability, box NMS, small regions."""

import cv2
import numpy as np

from .masks import MASK_THRESHOLD


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) cell centres of an n x n grid in [0, 1]^2, x varying fastest (SAM's layout)."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def stability_score(logits: np.ndarray, offset: float) -> np.ndarray:
    """(C, H, W) logits -> (C,) SAM's stability score: IoU of the masks at ``MASK_THRESHOLD`` +/- ``offset`` (0 where both are empty)."""
    inner = np.count_nonzero(logits > MASK_THRESHOLD + offset, axis=(1, 2))
    outer = np.count_nonzero(logits > MASK_THRESHOLD - offset, axis=(1, 2))
    return np.divide(inner, outer, out=np.zeros(len(logits)), where=outer > 0)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS with torchvision's semantics: stable descending score order, suppress when IoU > threshold.

    Hand-written in numpy because the runtime must not depend on torchvision, and OpenCV's
    NMSBoxes differs in score filtering and tie order.
    """
    boxes = boxes.astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: NaN, never suppressed (as torchvision)
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.array(keep, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``; report a change."""
    fill_holes = mode == "holes"
    working = (fill_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not fill_holes:
        fill = [i for i in range(n_labels) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True
