"""``train cache-teacher``, filling a teacher cache: images encoded in batches (both orientations in one batch) while loader workers read the next.

The device encodes batch n while the host writes the embeddings of batch n - 1 and the workers load
batch n + 1; images travel as uint8 and are normalised and flipped on the device (``encoder_inputs``).
"""

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from tinysam_edge.weights import resolve_checkpoint, sha256_file

from ..build_sam import build_sam, infer_model_name
from .data import SegmentationDataset, encoder_inputs, init_worker, pad_images
from .devices import amp_dtype, training_device
from .records import load_records
from .teacher_cache import CacheMeta, TeacherCache, open_cache


class ImageInputs(torch.utils.data.Dataset):
    """The resized uint8 images of some of a dataset's images: items ``{"index", "image", "input_size"}``."""

    def __init__(self, dataset: SegmentationDataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        image = self.dataset.load_resized(self.indices[i])
        return {"index": self.indices[i], "image": torch.from_numpy(image), "input_size": image.shape[:2]}


def _collate_images(samples: list[dict]) -> dict:
    return {
        "index": [s["index"] for s in samples],
        "image": pad_images([s["image"] for s in samples]),
        "input_size": torch.tensor([s["input_size"] for s in samples]),
    }


def _store(cache: TeacherCache, keys: list[str], pending: tuple) -> None:
    """Write one encoded batch (after its copy to the host has finished); files already intact are left alone."""
    indices, flipped, host, done = pending
    if done is not None:
        done.synchronize()
    for row, (index, flip) in enumerate(zip(indices, flipped, strict=True)):
        if not cache.intact(cache.path(keys[index], flip)):
            cache.store(keys[index], flip, host[row : row + 1].numpy())


def build_cache(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: SegmentationDataset,
    out_dir: str,
    meta: CacheMeta,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> TeacherCache:
    """Encode every image of ``dataset`` not cached yet into ``out_dir`` (see ``open_cache``); resumes an existing cache.

    ``encode`` maps (N, 3, 1024, 1024) float inputs on ``device`` to (N, 256, 64, 64) embeddings; with
    ``meta.flips`` each batch holds ``batch_size`` images and their mirror images.
    """
    cache = open_cache(out_dir, meta)
    keys = [r.key for r in dataset.records]
    missing = set(cache.missing(keys))
    todo = [i for i, key in enumerate(keys) if key in missing]
    log(f"teacher cache {cache.root}: {len(keys) - len(todo)} of {len(keys)} images done, encoding {len(todo)}")
    loader = torch.utils.data.DataLoader(
        ImageInputs(dataset, todo),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_images,
        worker_init_fn=init_worker,
        pin_memory=device.type == "cuda",
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    orientations = (False, True) if meta.flips else (False,)
    pending = None
    with tqdm(total=len(todo), desc="teacher embeddings", unit="img") as progress:
        for batch in loader:
            n = len(batch["index"])
            flipped = [f for f in orientations for _ in range(n)]
            inputs = encoder_inputs(
                batch["image"].repeat(len(orientations), 1, 1, 1),
                batch["input_size"].repeat(len(orientations), 1),
                torch.tensor(flipped),
                device,
            )
            embeddings = encode(inputs).to(torch.float16)
            host = torch.empty(embeddings.shape, dtype=torch.float16, pin_memory=device.type == "cuda")
            host.copy_(embeddings, non_blocking=True)
            done = torch.cuda.Event() if device.type == "cuda" else None
            if done is not None:
                done.record()
            if pending is not None:
                _store(cache, keys, pending)  # the previous batch, while the device encodes this one
            pending = (batch["index"] * len(orientations), flipped, host, done)
            progress.update(n)
        if pending is not None:
            _store(cache, keys, pending)
    return cache


def cache_teacher(
    checkpoint: str,
    images: str,
    out: str,
    annotations: str | None = None,
    model: str = "auto",
    flip: bool = False,
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 8,
    num_workers: int = 2,
    log: Callable[[str], None] = print,
) -> TeacherCache:
    """Precompute the teacher's embeddings of every image of a COCO or SA-1B dataset into ``out`` (resumable)."""
    torch_device = training_device(device)  # before the slow parts
    dtype = amp_dtype(amp, torch_device)
    path, _ = resolve_checkpoint(checkpoint)
    records = load_records(images, annotations)
    teacher = build_sam(model, checkpoint=path)
    encoder = teacher.image_encoder.to(torch_device).eval()
    log(f"teacher {Path(path).name} on {torch_device} (amp {dtype or 'off'}), {batch_size} images per batch")

    @torch.inference_mode()
    def encode(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(torch_device.type, dtype=dtype, enabled=dtype is not None):
            return encoder(inputs)

    meta = CacheMeta(model=infer_model_name(teacher.state_dict()), checkpoint=Path(path).name, sha256=sha256_file(Path(path)), flips=flip)
    return build_cache(encode, SegmentationDataset(records), out, meta, torch_device, batch_size, num_workers, log)
