"""Deterministic prompt sampling on real images: objects (annotations or the FP32 model's own masks) -> points and boxes."""

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .masks import mask_to_box
from .predictor import PredictorBase


@dataclass(frozen=True)
class Prompt:
    """One prompt set in original-image pixels; ``kind`` is "point" or "box"."""

    kind: str
    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def kwargs(self) -> dict:
        """Keyword arguments for ``predict``."""
        return {"point_coords": self.point_coords, "point_labels": self.point_labels, "box": self.box}


def image_rng(path: Path, salt: int = 0) -> np.random.Generator:
    """A random generator seeded by the file name, so every run samples the same prompts."""
    return np.random.default_rng(zlib.crc32(path.name.encode()) + salt)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel centre farthest from the mask boundary (a point clearly inside the object)."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x) + 0.5, float(y) + 0.5


def model_objects(predictor: PredictorBase, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Stand-in objects when there are no annotations: the predictor's best masks for random clicks."""
    h, w = predictor.original_size
    objects = []
    for _ in range(count):
        point = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
        masks, _, _ = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=False)
        if 0 < masks[0].sum() < h * w:
            objects.append(masks[0])
    return objects


def prompts_for_objects(objects: list[np.ndarray], rng: np.random.Generator, with_negatives: bool = False) -> list[Prompt]:
    """For each object: a positive interior point (optionally plus a negative point outside) and its box."""
    prompts = []
    for mask in objects:
        if not mask.any():
            continue
        x, y = interior_point(mask)
        coords, labels = [[x, y]], [1]
        outside = np.argwhere(~mask)
        if with_negatives and outside.size:
            ny, nx = outside[rng.integers(len(outside))]
            coords.append([nx + 0.5, ny + 0.5])
            labels.append(0)
        prompts.append(Prompt("point", np.array(coords), np.array(labels)))
        prompts.append(Prompt("box", box=mask_to_box(mask, pixel_edges=True).astype(np.float64)))
    return prompts


def coco_objects(coco, image_id: int, max_objects: int) -> list[np.ndarray]:
    """Ground-truth masks of an image from a pycocotools COCO object, largest first."""
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)), key=lambda a: -a["area"])
    return [coco.annToMask(a).astype(bool) for a in anns[:max_objects]]
