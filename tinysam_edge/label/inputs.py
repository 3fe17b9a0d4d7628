"""What a labelling job reads: the image list (folder, text file or COCO images JSON) and ``--boxes`` detections."""

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..coco import read_json
from ..errors import TinySamError
from ..image import IMAGE_SUFFIXES

#: The one category of everything-mode masks (SA-1B has no classes either).
OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass(frozen=True)
class ImageItem:
    """One image of a job: ``index`` (0-based position, decides the shard), COCO ``image_id``, file and its name in the output."""

    index: int
    image_id: int
    path: Path
    file_name: str
    #: Why the image is not labelled whatever its content (a name that is not valid UTF-8), else None.
    error: str | None = None


def image_item(index: int, image_id: int, path: Path, file_name: str) -> ImageItem:
    """An ImageItem; one whose name is not valid UTF-8 fails with one error line, its name shown with backslash escapes.

    Such names come from the filesystem (undecodable bytes, as ``os.fsdecode`` escapes them) or from
    JSON (a lone surrogate such as ``"\\udce9"``); they cannot be written into the UTF-8 output files.
    """
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:
        shown = file_name.encode("utf-8", "surrogateescape" if _fs_bytes(file_name) else "backslashreplace")
        name = shown.decode("utf-8", "backslashreplace")
        return ImageItem(index, image_id, path, name, f"the file name {name!r} is not valid UTF-8; rename the file to label it")
    return ImageItem(index, image_id, path, file_name)


def _fs_bytes(name: str) -> bool:
    """True if every surrogate in ``name`` is an undecodable filesystem byte (``os.fsdecode``'s surrogateescape)."""
    return all(0xDC80 <= ord(c) <= 0xDCFF for c in name if 0xD800 <= ord(c) <= 0xDFFF)


@dataclass
class ImageList:
    """The job's images in order, and the categories an images JSON brought (empty otherwise)."""

    items: list[ImageItem]
    categories: list[dict]

    def fingerprint(self) -> str:
        """sha256 of the (id, file name) list: a resumed job must see the same images in the same order."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(f"{item.image_id}\t{item.file_name}\n".encode())
        return digest.hexdigest()


def read_images(spec: Path, image_root: Path | None = None) -> ImageList:
    """IMAGES as a folder (recursive, sorted), a text file of paths (one a line) or a COCO JSON with an ``images`` list.

    Folder and text-file images get ids 1..N in order; a COCO JSON's ids are kept (sorted by id) and its
    ``file_name`` values are resolved against ``image_root`` (default: the JSON's folder).
    """
    if image_root is not None and spec.suffix.lower() != ".json":
        raise TinySamError("--image-root applies to a COCO images JSON; a folder or a text file names its images itself")
    if spec.is_dir():
        root = spec
        files = sorted(p for p in spec.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(spec)))
        items = [image_item(i, i + 1, p, p.relative_to(root).as_posix()) for i, p in enumerate(files)]
        images = ImageList(items, [])
    elif not spec.is_file():
        raise TinySamError(f"IMAGES not found: {spec} (a folder, a text file of paths, or a COCO images JSON)")
    elif spec.suffix.lower() == ".json":
        images = _from_coco(spec, image_root or spec.parent)
    else:
        images = _from_text(spec)
    if not images.items:
        raise TinySamError(f"no images in {spec} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _from_text(spec: Path) -> ImageList:
    try:
        lines = spec.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise TinySamError(f"{spec} is not a text file of image paths ({exc})") from exc
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    items = [image_item(i, i + 1, spec.parent / name, name) for i, name in enumerate(names)]
    return ImageList(items, [])


def _from_coco(spec: Path, root: Path) -> ImageList:
    data = read_json(spec, "images JSON")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise TinySamError(f"{spec} is not a COCO images JSON (no 'images' list)")
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or not isinstance(image.get("file_name"), str):
            raise TinySamError(f"{spec}: images[{i}] needs an integer 'id' and a string 'file_name', got {str(image)[:120]}")
    ids = [image["id"] for image in images]
    if len(set(ids)) != len(ids):
        raise TinySamError(f"{spec}: image ids are not unique")
    ordered = sorted(images, key=lambda image: image["id"])
    items = [image_item(i, image["id"], root / image["file_name"], image["file_name"]) for i, image in enumerate(ordered)]
    categories = data.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in categories):
        raise TinySamError(f"{spec}: 'categories' must be a list of objects with an integer 'id'")
    return ImageList(
        items, [{"id": c["id"], "name": str(c.get("name", c["id"])), "supercategory": str(c.get("supercategory", ""))} for c in categories]
    )


def read_detections(path: Path, images: ImageList) -> tuple[dict[int, list[dict]], list[dict], int]:
    """``--boxes``: a COCO results list (image_id, category_id, bbox XYWH, score) -> detections by image id, categories, ignored count.

    Detections of image ids the job does not have are ignored (counted); categories the images JSON
    does not name are added as ``category <id>``.
    """
    data = read_json(path, "detections")
    if not isinstance(data, list):
        raise TinySamError(f"{path} is not a COCO results list (expected a JSON list of detections)")
    known = {item.image_id for item in images.items}
    by_image: dict[int, list[dict]] = defaultdict(list)
    ignored = 0
    for i, det in enumerate(data):
        if not _is_detection(det):
            raise TinySamError(
                f"{path}: detection {i} needs integer image_id and category_id, bbox [x, y, w, h] (w, h >= 0) and a numeric score: "
                f"{str(det)[:120]}"
            )
        if det["image_id"] not in known:
            ignored += 1
            continue
        by_image[det["image_id"]].append(
            {"category_id": det["category_id"], "bbox": [float(v) for v in det["bbox"]], "score": float(det["score"])}
        )
    named = {c["id"] for c in images.categories}
    used = sorted({d["category_id"] for dets in by_image.values() for d in dets})
    categories = images.categories + [{"id": c, "name": f"category {c}", "supercategory": ""} for c in used if c not in named]
    return dict(by_image), categories, ignored


def _is_detection(det: object) -> bool:
    if not isinstance(det, dict) or not isinstance(det.get("image_id"), int) or not isinstance(det.get("category_id"), int):
        return False
    bbox, score = det.get("bbox"), det.get("score")
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    if not numbers or not isinstance(score, (int, float)) or isinstance(score, bool):
        return False
    return all(math.isfinite(v) for v in [*bbox, score]) and bbox[2] >= 0 and bbox[3] >= 0


def detections_fingerprint(by_image: dict[int, list[dict]]) -> str:
    """sha256 of the detections a job uses, in a canonical order (a resumed job must prompt the same boxes)."""
    canonical = json.dumps({str(k): by_image[k] for k in sorted(by_image)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
