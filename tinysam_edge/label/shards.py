"""The job folder: JSON Lines shards written whole and atomically, and the COCO ``annotations.json`` / ``errors.jsonl`` merged from them.

Layout of OUT_DIR::

    job.json                 what the job labels and how (a resumed job must match it)
    shards/shard-00000.jsonl one line per image, in image order: annotations or an "error"
    shards/shard-00000.sha256  the shard's sha256, written right after it (``sha256sum -c`` format)
    annotations.json         COCO instances file merged from every shard (rebuilt on each run)
    errors.jsonl             one line per image that could not be labelled, or whose boxes were dropped

A shard file exists only once all its images are done, so a killed job leaves whole shards and at
most a hidden temporary file, which the next run deletes. A resumed job keeps only the shards that
match their recorded sha256 and hold exactly their images' lines; any other is redone.
"""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import TinySamError
from ..files import atomic_write, write_text
from .inputs import ImageItem

JOB_FILE = "job.json"
SHARD_DIR = "shards"
ANNOTATIONS_FILE = "annotations.json"
ERRORS_FILE = "errors.jsonl"
#: What this package writes into OUT_DIR (the only files ``--overwrite`` removes).
OUTPUTS = (JOB_FILE, ANNOTATIONS_FILE, ERRORS_FILE)


def shard_path(out: Path, shard: int) -> Path:
    """OUT_DIR/shards/shard-NNNNN.jsonl."""
    return out / SHARD_DIR / f"shard-{shard:05d}.jsonl"


def checksum_path(out: Path, shard: int) -> Path:
    """OUT_DIR/shards/shard-NNNNN.sha256: the shard's digest, recorded when it was written."""
    return shard_path(out, shard).with_suffix(".sha256")


def shard_indices(total: int, shard_size: int, shard: int) -> range:
    """The image indices shard ``shard`` holds."""
    return range(shard * shard_size, min(total, (shard + 1) * shard_size))


def shard_count(total: int, shard_size: int) -> int:
    return -(-total // shard_size)


def remove_partial(out: Path) -> int:
    """Delete the hidden temporary files an interrupted run left; returns how many."""
    leftovers = [*(out / SHARD_DIR).glob(".*.tmp"), *out.glob(".*.tmp")] if out.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def remove_outputs(out: Path) -> None:
    """``--overwrite``: delete this package's files in OUT_DIR (and nothing else)."""
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for pattern in ("shard-*.jsonl", "shard-*.sha256"):
        for path in (out / SHARD_DIR).glob(pattern):
            path.unlink()


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _checksum_line(data: bytes, name: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


def shard_problem(out: Path, shard: int, items: list[ImageItem]) -> str | None:
    """Why shard ``shard`` cannot be kept (``items`` are its images), or None when it matches its checksum and its images."""
    path, record = shard_path(out, shard), checksum_path(out, shard)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    try:
        recorded = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "no checksum was recorded for it"
    if recorded != _checksum_line(data, path.name):
        return "it does not match the checksum recorded when it was written"
    try:
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"it is not JSON Lines ({exc})"
    if len(lines) != len(items):
        return f"it holds {len(lines)} lines for {len(items)} images"
    for line, item in zip(lines, items):
        if not _valid_line(line, item):
            return f"its line of image {item.image_id} ({item.file_name}) is not that image's record"
    return None


def _valid_line(line: object, item: ImageItem) -> bool:
    if not isinstance(line, dict) or [line.get(k) for k in ("index", "image_id", "file_name")] != [
        item.index,
        item.image_id,
        item.file_name,
    ]:
        return False
    if "error" in line:
        return isinstance(line["error"], str)
    annotations, dropped = line.get("annotations"), line.get("dropped_boxes", [])
    sized = all(isinstance(line.get(k), int) for k in ("height", "width"))
    return sized and isinstance(annotations, list) and all(isinstance(a, dict) for a in annotations) and isinstance(dropped, list)


def complete_shards(out: Path, items: list[ImageItem], shard_size: int) -> tuple[set[int], list[str]]:
    """Shards to keep, and one note per shard file that was damaged (deleted, to be redone); never raises for a bad shard."""
    done, damaged = set(), []
    for shard in range(shard_count(len(items), shard_size)):
        path = shard_path(out, shard)
        if not path.is_file():
            checksum_path(out, shard).unlink(missing_ok=True)
            continue
        indices = shard_indices(len(items), shard_size, shard)
        problem = shard_problem(out, shard, items[indices.start : indices.stop])
        if problem is None:
            done.add(shard)
            continue
        damaged.append(f"{path.name}: {problem}")
        path.unlink()
        checksum_path(out, shard).unlink(missing_ok=True)
    return done, damaged


class ShardWriter:
    """Collects image lines as they come (in any order) and writes each shard once all its images are in."""

    def __init__(self, out: Path, total: int, shard_size: int) -> None:
        self.out, self.total, self.shard_size = out, total, shard_size
        self._open: dict[int, dict[int, dict]] = {}
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, line: dict) -> bool:
        """Buffer one image line; returns True when this completed (and wrote) its shard."""
        shard = line["index"] // self.shard_size
        lines = self._open.setdefault(shard, {})
        lines[line["index"]] = line
        expected = shard_indices(self.total, self.shard_size, shard)
        if len(lines) < len(expected):
            return False
        text = "".join(json.dumps(lines[i], separators=(",", ":")) + "\n" for i in expected)
        path = shard_path(self.out, shard)
        write_text(path, text)
        write_text(checksum_path(self.out, shard), _checksum_line(text.encode(), path.name))
        del self._open[shard]
        return True

    @property
    def buffered(self) -> int:
        """Images held for shards that are not complete yet."""
        return sum(len(lines) for lines in self._open.values())


def _lines(out: Path, total: int, shard_size: int) -> Iterator[dict]:
    for shard in range(shard_count(total, shard_size)):
        path = shard_path(out, shard)
        if not path.is_file():
            raise TinySamError(f"{path} is missing; run the job again with --resume to finish it")
        yield from _read_lines(path)


def merge(out: Path, items: list[ImageItem], shard_size: int, categories: list[dict], info: dict) -> dict[str, int]:
    """Rebuild ``annotations.json`` (COCO instances; ids 1.. in image order) and ``errors.jsonl`` from the shards.

    Annotations stream to the file shard by shard, so only the image list is held in memory. Returns
    the counts: images labelled, failed, annotations, boxes dropped (empty inside their image).
    """
    images, errors, count, dropped = [], [], 0, 0
    with atomic_write(out / ANNOTATIONS_FILE) as tmp, tmp.open("w") as f:
        head = json.dumps({"info": info, "licenses": [], "categories": categories})
        f.write(head[:-1] + ',"annotations":[')
        for line in _lines(out, len(items), shard_size):
            if "error" in line:
                errors.append({"image_id": line["image_id"], "file_name": line["file_name"], "error": line["error"]})
                continue
            if line.get("dropped_boxes"):
                dropped += len(line["dropped_boxes"])
                reason = f"{len(line['dropped_boxes'])} boxes are empty inside the {line['width']}x{line['height']} image; dropped"
                errors.append({"image_id": line["image_id"], "file_name": line["file_name"], "warning": reason, "dropped_boxes": line["dropped_boxes"]})  # fmt: skip
            images.append({"id": line["image_id"], "file_name": line["file_name"], "height": line["height"], "width": line["width"]})
            for ann in line["annotations"]:
                count += 1
                f.write(
                    ("," if count > 1 else "")
                    + json.dumps({"id": count, "image_id": line["image_id"], "iscrowd": 0, **ann}, separators=(",", ":"))
                )
        f.write('],"images":' + json.dumps(images) + "}\n")
    write_text(out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors))
    return {"labelled": len(images), "failed": sum("error" in e for e in errors), "annotations": count, "dropped_boxes": dropped}
