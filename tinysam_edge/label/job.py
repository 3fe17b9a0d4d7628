"""One labelling job from start (or resume) to merged output, whichever engine labels the images."""

import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from ..coco import read_json
from ..errors import TinySamError
from ..files import write_text
from .inputs import ImageItem, ImageList
from .local import head
from .shards import JOB_FILE, SHARD_DIR, ShardWriter, complete_shards, merge, remove_outputs, remove_partial, shard_count, shard_indices

#: An engine: the pending images -> their shard lines, in any order.
Engine = Callable[[list[ImageItem]], Iterator[dict]]


@dataclass
class Job:
    """What a job labels and how; ``settings`` (prompt mode, thresholds, model) must match when a job is resumed."""

    out: Path
    images: ImageList
    categories: list[dict]
    shard_size: int
    settings: dict = field(default_factory=dict)
    #: Shard files a resume found damaged (deleted, to be redone), one note each; set by ``prepare``.
    damaged: list[str] = field(default_factory=list)

    def manifest(self) -> dict:
        return {
            "format": "tinysam-edge-label",
            "version": 1,
            "images": len(self.images.items),
            "images_sha256": self.images.fingerprint(),
            "shard_size": self.shard_size,
            **self.settings,
        }


def prepare(job: Job, resume: bool, overwrite: bool) -> set[int]:
    """Set OUT_DIR up for ``job``; returns the shards already complete (only with ``resume``).

    A folder holding another job's files is refused unless ``overwrite`` (which deletes only this
    package's files) or ``resume`` with the same images and settings.
    """
    manifest, path = job.manifest(), job.out / JOB_FILE
    if path.exists() and not (resume or overwrite):
        raise TinySamError(f"{job.out} holds a labelling job; pass --resume to finish it or --overwrite to start again")
    if not path.exists() and any((job.out / SHARD_DIR).glob("shard-*.jsonl")):
        raise TinySamError(f"{job.out}/{SHARD_DIR} holds shards but no {JOB_FILE}; use an empty --out folder")
    remove_partial(job.out)
    if path.exists() and overwrite:
        remove_outputs(job.out)
    elif path.exists():
        previous = read_json(path, "job file")
        changed = (
            sorted(k for k in manifest.keys() | previous.keys() if manifest.get(k) != previous.get(k))
            if isinstance(previous, dict)
            else ["all"]
        )
        if changed:
            raise TinySamError(
                f"cannot resume {job.out}: {', '.join(changed)} differ from the job it holds "
                "(use the same inputs and options, or --overwrite)"
            )
        done, job.damaged = complete_shards(job.out, job.images.items, job.shard_size)
        for note in job.damaged:
            print(f"note: redoing {note}", file=sys.stderr)
        return done
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return set()


def run(job: Job, engine: Engine, done: set[int], progress: bool = True) -> dict:
    """Label the images of the shards not in ``done``, then merge every shard; returns the summary counts."""
    items = job.images.items
    pending = [
        item
        for shard in range(shard_count(len(items), job.shard_size))
        if shard not in done
        for item in _shard_items(items, job.shard_size, shard)
    ]
    writer = ShardWriter(job.out, len(items), job.shard_size)
    counts = {"done": 0, "skipped": len(items) - len(pending), "failed_now": 0, "masks_now": 0, "redone_shards": len(job.damaged)}
    start = time.perf_counter()
    unnamed = [{**head(item), "error": item.error} for item in pending if item.error]  # no engine sees a name it cannot write
    readable = [item for item in pending if not item.error]
    with tqdm(total=len(items), initial=counts["skipped"], unit="image", desc="labelling", disable=not progress, smoothing=0.1) as bar:
        if pending:
            for line in itertools.chain(unnamed, engine(readable) if readable else ()):
                writer.add(line)
                counts["done"] += 1
                counts["failed_now"] += "error" in line
                counts["masks_now"] += len(line.get("annotations", []))
                bar.update(1)
                bar.set_postfix(masks=counts["masks_now"], failed=counts["failed_now"], refresh=False)
    seconds = time.perf_counter() - start
    if writer.buffered or counts["done"] != len(pending):
        raise TinySamError(f"the engine returned {counts['done']} of {len(pending)} images; run again with --resume")
    info = {"description": "tinysam-edge label", "version": __version__, **job.settings}
    merged = merge(job.out, items, job.shard_size, job.categories, info)
    return {**counts, **merged, "seconds": seconds, "images_per_second": counts["done"] / seconds if seconds > 0 else 0.0}


def _shard_items(items: list[ImageItem], shard_size: int, shard: int) -> list[ImageItem]:
    indices = shard_indices(len(items), shard_size, shard)
    return items[indices.start : indices.stop]


def summary_line(out: Path, counts: dict) -> str:
    """The summary printed at the end of a job."""
    redone = f", redid {counts['redone_shards']} damaged shards" if counts.get("redone_shards") else ""
    dropped = f", {counts['dropped_boxes']} boxes dropped (empty inside their image)" if counts.get("dropped_boxes") else ""
    return (
        f"done {counts['done']} images this run ({counts['images_per_second']:.2f} images/s, {counts['masks_now']} masks), "
        f"skipped {counts['skipped']} already labelled, failed {counts['failed_now']} this run{redone}; "
        f"{out / 'annotations.json'}: {counts['labelled']} images, {counts['annotations']} annotations{dropped}; "
        f"{out / 'errors.jsonl'}: {counts['failed']} images"
    )
