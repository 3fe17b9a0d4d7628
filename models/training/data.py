"""Training data: SA-1B and COCO-instances datasets with the runtime's exact preprocessing, and a worker-safe loader.

A sample is one image, preprocessed exactly like inference (``tinysam_edge.transforms``), with up to
``max_masks`` of its objects as low-res (256x256) masks in the padded input frame plus their boxes.
Randomness (object subset, flips) comes from ``(seed, epoch, index)``, so a sample is the same whichever
worker loads it and however many workers there are.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from tinysam_edge.coco import load_ground_truth, read_json
from tinysam_edge.image import list_images, load_image
from tinysam_edge.masks import mask_to_box
from tinysam_edge.prompts import LOW_RES_SIZE
from tinysam_edge.transforms import IMG_SIZE, apply_boxes, preprocess

from .teacher_cache import TeacherCache


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


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with their object masks, ready for distillation (see the module docstring for a sample's fields)."""

    def __init__(
        self,
        records: list[ImageRecord],
        max_masks: int = 16,
        min_area: float = 64.0,
        flip: bool = False,
        teacher_cache: TeacherCache | None = None,
        seed: int = 0,
    ) -> None:
        if not records:
            raise ValueError("the dataset has no images")
        if flip and teacher_cache is not None and not teacher_cache.flips:
            raise ValueError(f"random flips need flipped teacher embeddings; rebuild {teacher_cache.root} with cache-teacher --flip")
        self.records = records
        self.max_masks = max_masks
        self.min_area = min_area
        self.flip = flip
        self.teacher_cache = teacher_cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new object subsets and flips (loaders must not keep persistent workers)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load_input(self, index: int, flipped: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
        """The preprocessed (1, 3, 1024, 1024) encoder input of image ``index`` and its resized (h, w)."""
        image = load_image(self.records[index].path)
        return preprocess(np.ascontiguousarray(image[:, ::-1]) if flipped else image)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flipped = bool(self.flip and rng.random() < 0.5)
        image, input_size = self.load_input(index, flipped)
        big = [a for a in record.annotations if a.get("area", np.inf) >= self.min_area]
        chosen = rng.permutation(len(big))[: self.max_masks] if big else []
        masks, boxes = [], []
        for i in chosen:
            mask = decode_annotation(big[i], record.height, record.width)
            if flipped:
                mask = mask[:, ::-1]
            low = to_low_res(mask, input_size)
            if low.any():  # objects thinner than a low-res cell vanish; they cannot be supervised
                masks.append(low)
                boxes.append(apply_boxes(mask_to_box(mask, pixel_edges=True).astype(np.float64), (record.height, record.width)))
        sample = {
            "key": record.key,
            "image": torch.from_numpy(image[0]),
            "input_size": input_size,
            "flipped": flipped,
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, LOW_RES_SIZE, LOW_RES_SIZE, dtype=torch.bool),
            "boxes": torch.from_numpy(np.stack(boxes)).float() if boxes else torch.zeros(0, 4),
        }
        if self.teacher_cache is not None:
            sample["teacher_embedding"] = torch.from_numpy(self.teacher_cache.load(record.key, flipped)).float()
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack images (and teacher embeddings); keep per-image masks, boxes and metadata as lists."""
    batch = {key: [s[key] for s in samples] for key in samples[0]}
    batch["image"] = torch.stack(batch["image"])
    if "teacher_embedding" in batch:
        batch["teacher_embedding"] = torch.stack(batch["teacher_embedding"])
    return batch


def _init_worker(_: int) -> None:
    cv2.setNumThreads(1)  # every worker would otherwise start one OpenCV thread per core
    torch.set_num_threads(1)


def make_loader(
    dataset: SegmentationDataset, batch_size: int, num_workers: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
) -> torch.utils.data.DataLoader:
    """A DataLoader that is safe with worker processes and DistributedDataParallel (call its sampler's ``set_epoch``)."""
    if world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
    else:
        sampler = EpochSampler(dataset, shuffle, seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_init_worker,
        drop_last=True,
        persistent_workers=False,  # workers must be re-created each epoch to see set_epoch
        # forked workers can deadlock on OpenCV/OpenMP thread pools the parent already started
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )


class EpochSampler(torch.utils.data.Sampler[int]):
    """Single-process counterpart of DistributedSampler: a seeded permutation per epoch, with ``set_epoch``."""

    def __init__(self, dataset: SegmentationDataset, shuffle: bool, seed: int) -> None:
        self.size = len(dataset)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.size))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size
