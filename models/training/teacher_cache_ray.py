"""``train cache-teacher --engine ray``: the teacher-embedding cache filled by a Ray Data actor pool (one teacher encoder per actor).

Same cache as ``models.training.cache_teacher`` (meta checks, resumability, atomic fp16 ``.npy`` files):
``build_cache`` validates and creates the folder, Ray encodes the missing images, the driver writes
them. Needs the ``[train]`` and ``[scale]`` extras; imports torch and ray only when called.
"""

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinysam_edge.ray_utils import import_ray, init_ray

if TYPE_CHECKING:
    from .teacher_cache import TeacherCache


class TeacherActor:
    """Ray Data actor: the teacher's image encoder on CPU, encoding (index, flipped) rows of a record list."""

    def __init__(self, checkpoint: str, model: str, records: list, amp: str, num_threads: int) -> None:
        import torch

        from ..build_sam import build_sam
        from .data import SegmentationDataset
        from .devices import amp_dtype

        torch.set_num_threads(num_threads)
        self.torch = torch
        self.encoder = build_sam(model, checkpoint=checkpoint).image_encoder.eval()
        self.dtype = amp_dtype(amp, torch.device("cpu"))
        self.dataset = SegmentationDataset(records)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for index, flipped in zip(batch["index"], batch["flipped"]):
            image, _ = self.dataset.load_input(int(index), bool(flipped))
            with self.torch.inference_mode(), self.torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
                embedding = self.encoder(self.torch.from_numpy(image))
            out.append(embedding.float().numpy().astype(np.float16).tobytes())
        return {"index": batch["index"], "flipped": batch["flipped"], "embedding": np.array(out, dtype=object)}


def encode_on_ray(
    checkpoint: str,
    model: str,
    records: list,
    jobs: list[tuple[int, bool]],
    amp: str,
    workers: int,
    cpus_per_worker: float,
    address: str | None,
) -> Iterator[tuple[int, bool, np.ndarray]]:
    """(index, flipped, (1, 256, 64, 64) float16 embedding) for every job, from ``workers`` TeacherActors."""
    ray = import_ray()
    started = init_ray(ray, address, workers * cpus_per_worker + 1)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = [{"index": index, "flipped": flipped} for index, flipped in jobs]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / 2))).map_batches(
            TeacherActor,
            fn_constructor_kwargs={
                "checkpoint": checkpoint,
                "model": model,
                "records": records,
                "amp": amp,
                "num_threads": max(1, int(cpus_per_worker)),
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            batch_size=2,
            batch_format="numpy",
        )
        for row in ds.iter_rows():
            yield int(row["index"]), bool(row["flipped"]), np.frombuffer(row["embedding"], dtype=np.float16).reshape(1, 256, 64, 64)
    finally:
        if started:
            ray.shutdown()


def cache_teacher_ray(
    checkpoint: str,
    images: str,
    out: str,
    annotations: str | None = None,
    model: str = "auto",
    flip: bool = False,
    amp: str = "auto",
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> "TeacherCache":
    """``cache_teacher`` on Ray: same arguments and cache, CPU actors instead of one device."""
    from tinysam_edge.weights import resolve_checkpoint, sha256_file

    from ..build_sam import build_sam, infer_model_name
    from .records import load_records
    from .teacher_cache import CacheMeta, open_cache

    path, _ = resolve_checkpoint(checkpoint)
    records = load_records(images, annotations)
    name = infer_model_name(build_sam(model, checkpoint=path).state_dict())
    meta = CacheMeta(model=name, checkpoint=Path(path).name, sha256=sha256_file(Path(path)), flips=flip)
    cache = open_cache(out, meta)
    keys = [r.key for r in records]
    jobs = [(i, f) for i, key in enumerate(keys) for f in ((False, True) if flip else (False,)) if not cache.intact(cache.path(key, f))]
    log(f"teacher cache {out}: encoding {len(jobs)} embeddings of {len(keys)} images on Ray ({workers} actors)")
    for index, flipped, embedding in encode_on_ray(str(path), model, records, jobs, amp, workers, cpus_per_worker, address):
        cache.store(keys[index], flipped, embedding)
    return cache
