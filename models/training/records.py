"""Training records: which images a dataset holds (SA-1B layout or a COCO instances JSON), the held-out split, and mask decoding."""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from tinysam_edge.coco import load_ground_truth, read_json
from tinysam_edge.image import list_images
from tinysam_edge.prompts import LOW_RES_SIZE
from tinysam_edge.transforms import IMG_SIZE


@dataclass(frozen=True)
class ImageRecord:
    """One training image: a cache key unique in the dataset, its file and its annotations (RLE or polygons)."""

    key: str
    path: Path
    height: int
    width: int
    annotations: tuple[dict, ...]


def sa1b_records(images: Path) -> list[ImageRecord]:
    """Records of an SA-1B folder: ``sa_N.jpg`` next to ``sa_N.json`` (``{"image": ..., "annotations": [RLE...]}``)."""
    records = []
    for path in list_images(images):
        ann_path = path.with_suffix(".json")
        if not ann_path.is_file():
            raise ValueError(f"{path.name} has no annotation file {ann_path.name} (SA-1B layout: one JSON per image)")
        data = read_json(ann_path, "SA-1B annotation")
        try:
            info, annotations = data["image"], data["annotations"]
            records.append(ImageRecord(path.stem, path, int(info["height"]), int(info["width"]), tuple(annotations)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{ann_path} is not an SA-1B annotation file (needs image.height, image.width and annotations)") from exc
    return records


def coco_records(images: Path, annotations: Path) -> list[ImageRecord]:
    """Records of a COCO instances JSON (crowd regions are skipped) whose images are in ``images``."""
    coco = load_ground_truth(annotations)
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        path = Path(images) / info["file_name"]
        if anns and path.is_file():
            records.append(ImageRecord(Path(info["file_name"]).stem, path, info["height"], info["width"], tuple(anns)))
    if not records:
        raise ValueError(f"no annotated images of {annotations} found in {images}")
    return records


def load_records(images: str | Path, annotations: str | Path | None = None) -> list[ImageRecord]:
    """COCO records when ``annotations`` is given, else the SA-1B per-image JSON layout; keys must be unique."""
    records = coco_records(Path(images), Path(annotations)) if annotations else sa1b_records(Path(images))
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"image file names under {images} are not unique; the teacher cache needs one key per image")
    return records


def split_records(records: list[ImageRecord], val_fraction: float, seed: int = 0) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministic held-out split: (train, val), with at least one image in each when there are two or more."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = min(max(round(len(records) * val_fraction), 1 if val_fraction > 0 else 0), len(records) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [records[i] for i in train], [records[i] for i in val]


def decode_annotation(ann: dict, height: int, width: int) -> np.ndarray:
    """An annotation's mask (RLE as in SA-1B/COCO, or COCO polygons) as HxW bool."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def to_low_res(mask: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """An original-resolution mask in the 256x256 grid of the padded 1024 input frame (area resampling, >= 50%)."""
    h, w = input_size
    frame = np.zeros((IMG_SIZE, IMG_SIZE), dtype=np.float32)
    frame[:h, :w] = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (LOW_RES_SIZE, LOW_RES_SIZE), interpolation=cv2.INTER_AREA) >= 0.5
