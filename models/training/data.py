"""The training loader: samples as uint8 images plus object masks, batches with every object of every image flattened.

A sample is one image resized like inference (``tinysam_edge.transforms``, still uint8) with up to
``max_masks`` of its objects as low-res (256x256) masks in the padded input frame plus their boxes.
Normalisation, padding and horizontal flips of the image happen on the training device
(``encoder_inputs``); masks and boxes arrive flipped already. Randomness (object subset, flip) comes
from ``(seed, epoch, index)`` and the sampler hands each index out together with its epoch, so a
sample is the same whichever worker loads it, and worker processes stay alive across epochs.
"""

import signal

import cv2
import numpy as np
import torch

from tinysam_edge.image import load_image
from tinysam_edge.masks import mask_to_box
from tinysam_edge.prompts import LOW_RES_SIZE
from tinysam_edge.transforms import IMG_SIZE, PIXEL_MEAN, PIXEL_STD, apply_boxes, normalize_and_pad, resize_longest_side

from .records import ImageRecord, decode_annotation, to_low_res
from .teacher_cache import TeacherCache


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with their object masks, ready for distillation (see the module docstring for a sample's fields).

    Items are ``(epoch, index)`` pairs (a bare ``index`` is epoch 0).
    """

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

    def __len__(self) -> int:
        return len(self.records)

    def load_resized(self, index: int) -> np.ndarray:
        """Image ``index`` as HxWx3 uint8, its longest side resized to 1024 (not flipped, not padded; writable, for torch)."""
        return np.array(resize_longest_side(load_image(self.records[index].path)))

    def load_input(self, index: int, flipped: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
        """The (1, 3, 1024, 1024) float32 encoder input of image ``index`` and its resized (h, w), on the host.

        Equal to ``encoder_inputs`` of the same image (a flip of the resized image equals the resize of the flipped one).
        """
        resized = self.load_resized(index)
        return normalize_and_pad(np.ascontiguousarray(resized[:, ::-1]) if flipped else resized), resized.shape[:2]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        flipped = bool(self.flip and rng.random() < 0.5)
        image = self.load_resized(index)
        input_size = image.shape[:2]
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
            "image": torch.from_numpy(image),
            "input_size": input_size,
            "flipped": flipped,
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, LOW_RES_SIZE, LOW_RES_SIZE, dtype=torch.bool),
            "boxes": torch.from_numpy(np.stack(boxes)).float() if boxes else torch.zeros(0, 4),
        }
        if self.teacher_cache is not None:
            sample["teacher_embedding"] = torch.from_numpy(self.teacher_cache.load(record.key, flipped))
        return sample


def pad_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Resized HxWx3 uint8 images zero-padded into one (B, 1024, 1024, 3) uint8 batch."""
    batch = torch.zeros(len(images), IMG_SIZE, IMG_SIZE, 3, dtype=torch.uint8)
    for out, image in zip(batch, images, strict=True):
        out[: image.shape[0], : image.shape[1]] = image
    return batch


def collate(samples: list[dict]) -> dict:
    """A batch: images padded into (B, 1024, 1024, 3) uint8, the objects of all images concatenated.

    Per image: ``key``, ``input_size`` (B, 2), ``flipped`` (B,) and the fp16 ``teacher_embedding``
    (B, 256, 64, 64) if cached. Per object (P in all): ``masks`` (P, 256, 256), ``boxes`` (P, 4),
    ``image_index`` (P,) and ``object_weight`` (P,), which makes a weighted sum over objects the mean
    over images of each image's mean (images without objects count for nothing).
    """
    counts = torch.tensor([s["masks"].shape[0] for s in samples])
    images = pad_images([s["image"] for s in samples])
    per_image = (1.0 / (counts.clamp(min=1) * (counts > 0).sum().clamp(min=1))).float()
    batch = {
        "key": [s["key"] for s in samples],
        "image": images,
        "input_size": torch.tensor([s["input_size"] for s in samples]),
        "flipped": torch.tensor([s["flipped"] for s in samples]),
        "masks": torch.cat([s["masks"] for s in samples]),
        "boxes": torch.cat([s["boxes"] for s in samples]),
        "image_index": torch.arange(len(samples)).repeat_interleave(counts),
    }
    batch["object_weight"] = per_image[batch["image_index"]]
    if "teacher_embedding" in samples[0]:
        batch["teacher_embedding"] = torch.cat([s["teacher_embedding"] for s in samples])
    return batch


def encoder_inputs(images: torch.Tensor, sizes: torch.Tensor, flipped: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, 1024, 1024, 3) uint8 padded images -> (B, 3, 1024, 1024) float32 encoder inputs on ``device``.

    Flips the resized (h, w) part of the images where ``flipped`` (B,), normalises with SAM's mean and
    std and zeroes the padding: the same numbers as ``tinysam_edge.transforms.preprocess``.
    """
    images = images.to(device, non_blocking=True)
    sizes = sizes.to(device, non_blocking=True)
    flipped = flipped.to(device, non_blocking=True)
    x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W) with channels-last strides
    grid = torch.arange(x.shape[-1], device=device)
    h, w = sizes[:, 0, None], sizes[:, 1, None]
    columns = torch.where(flipped[:, None] & (grid < w), w - 1 - grid, grid)  # (B, W) source column per column
    x = x.gather(3, columns[:, None, None, :].expand_as(x))
    for c in range(3):  # scalars, not a mean/std tensor: building one on the device would copy from the host
        x[:, c].sub_(float(PIXEL_MEAN[c])).div_(float(PIXEL_STD[c]))
    valid = (grid[None, :, None] < h[:, :, None]) & (grid[None, None, :] < w[:, :, None])  # (B, H, W)
    return torch.where(valid[:, None], x, 0.0)


def init_worker(_: int) -> None:
    """A loader worker's set-up: one thread each, and stop signals left to the main process."""
    cv2.setNumThreads(1)  # every worker would otherwise start one OpenCV thread per core
    torch.set_num_threads(1)
    # the main process stops the run (it saves first, then shuts its workers down): a worker killed by the
    # same Ctrl-C or scheduler SIGTERM would make the loader fail before the state is written
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """(epoch, index) pairs: a seeded permutation per epoch, this rank's share of it (``DistributedSampler``'s split).

    Each rank takes every ``world``-th index of the permutation (the tail that does not divide evenly is
    dropped); ``set_epoch(epoch, start)`` skips the first ``start`` indices of this rank (a resumed run).
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use the permutation of ``epoch`` from its ``start``-th index on."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle else np.arange(self.size)
        share = order[self.rank : self.size - self.size % self.world : self.world]
        return iter([(self.epoch, int(i)) for i in share[self.start :]])

    def __len__(self) -> int:
        return self.size // self.world - self.start


def make_loader(
    dataset: SegmentationDataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker processes live for the whole run (its sampler's ``set_epoch`` picks the epoch)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=init_worker,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        # forked workers can deadlock on OpenCV/OpenMP thread pools the parent already started
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
