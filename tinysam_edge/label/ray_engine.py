"""``--engine ray``: a Ray Data pipeline. Tasks read and decode the images; an actor pool (``map_batches`` with
``LabelActor``, one OpenVINO predictor each) labels them; the driver writes the shards.

Ray is imported only inside its functions (through ``tinysam_edge.ray_utils``, shared with training's
teacher cache), so the runtime and the local engine work without the ``[scale]`` extra.
"""

import json
import math
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import TinySamError
from ..manifest import MANIFEST_FILE
from ..ray_utils import import_ray, init_ray
from .annotate import Labeller, Task, decode
from .inputs import ImageItem
from .local import head

#: Logical CPUs a decode task asks for (they are short; several run beside each actor).
DECODE_CPUS = 0.25


def pack_model_dir(model_dir: Path) -> dict[str, bytes]:
    """The files of an exported model dir (flat), to ship through the object store to nodes that lack the path."""
    return {path.name: path.read_bytes() for path in sorted(model_dir.iterdir()) if path.is_file()}


def unpack_model_dir(files: dict[str, bytes], dest: Path) -> Path:
    """Write ``pack_model_dir``'s files into ``dest``; returns it."""
    for name, data in files.items():
        if Path(name).name != name:
            raise TinySamError(f"refusing to unpack a model file with a path in its name: {name!r}")
        (dest / name).write_bytes(data)
    return dest


def _decode_row(row: dict) -> dict:
    """Ray task: read one image into raw RGB bytes (or the reason it cannot be read)."""
    image, error = decode(row["path"])
    if image is None:
        return {**row, "pixels": b"", "height": 0, "width": 0, "error": error}
    return {**row, "pixels": image.tobytes(), "height": image.shape[0], "width": image.shape[1], "error": ""}


class LabelActor:
    """Ray Data actor: holds one Labeller (compiled predictor) and labels batches of decoded images into shard lines."""

    def __init__(self, model: dict, task: dict, device: str, precision: str | None, num_threads: int) -> None:
        model_dir = Path(model["path"])
        if not (model_dir / MANIFEST_FILE).is_file() and model["files"]:  # not on this node: unpack the shipped copy
            folder = tempfile.mkdtemp(prefix="tinysam-model-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            model_dir = unpack_model_dir(import_ray().get(model["files"][0]), Path(folder))
        self.labeller = Labeller(model_dir, Task(**task), device=device, precision=precision, num_threads=num_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lines = []
        for i in range(len(batch["index"])):
            item = ImageItem(int(batch["index"][i]), int(batch["image_id"][i]), Path(str(batch["path"][i])), str(batch["file_name"][i]))
            error = str(batch["error"][i]) or None
            image = None
            if error is None:
                h, w = int(batch["height"][i]), int(batch["width"][i])
                image = np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(h, w, 3)
            line = self.labeller.line(head(item), image, json.loads(str(batch["detections"][i])), error)
            lines.append(json.dumps(line, separators=(",", ":")))
        return {"line": np.array(lines, dtype=object)}


def iter_ray(
    items: list[ImageItem],
    task: Task,
    detections: dict[int, list[dict]],
    model_dir: Path,
    device: str = "CPU",
    precision: str | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    batch_size: int = 4,
    address: str | None = None,
) -> Iterator[dict]:
    """Shard lines of ``items`` (in completion order) from a Ray Data pipeline with ``workers`` LabelActors.

    Each actor reserves ``cpus_per_worker`` logical CPUs and runs OpenVINO on that many threads (at
    least one). The model dir goes to the actors by path where it exists on their node, else (with
    ``address``, a cluster) from one copy in the object store. Ray retries a batch whose actor dies. A local Ray started here is shut
    down when the iterator finishes or is closed.
    """
    ray = import_ray()
    started = init_ray(ray, address, workers * cpus_per_worker + 1)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # a local Ray's actors read the model dir in place; on a cluster one copy goes to the object store for nodes without it
        files = [ray.put(pack_model_dir(Path(model_dir)))] if address is not None else []
        model = {"path": str(Path(model_dir).resolve()), "files": files}
        rows = [
            {
                "index": i.index,
                "image_id": i.image_id,
                "file_name": i.file_name,
                "path": str(i.path),
                "detections": json.dumps(detections.get(i.image_id, [])),
            }
            for i in items
        ]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size))).map(_decode_row, num_cpus=DECODE_CPUS)
        ds = ds.map_batches(
            LabelActor,
            fn_constructor_kwargs={
                "model": model,
                "task": asdict(task),
                "device": device,
                "precision": precision,
                "num_threads": max(1, int(cpus_per_worker)),
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            batch_size=batch_size,
            batch_format="numpy",
        )
        try:
            for row in ds.iter_rows():
                yield json.loads(row["line"])
        except ray.exceptions.RayError as exc:  # e.g. an actor that cannot load the model: its last line says why
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise TinySamError(f"the Ray job failed: {(lines or [type(exc).__name__])[-1][:300]}") from exc
    finally:
        if started:
            ray.shutdown()
