"""COCO-format files: JSON reading with one clear error, and the ground truth as a pycocotools ``COCO`` object (``[eval]`` extra)."""

import contextlib
import io
import json
import math
from pathlib import Path

from .errors import TinySamError


def read_json(path: str | Path, what: str) -> object:
    """Load a JSON file with one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise TinySamError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TinySamError(f"{what} {path} is not valid JSON ({exc})") from exc


def load_ground_truth(annotations: str | Path):
    """A pycocotools COCO object from an instances JSON, without pycocotools' chatter."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise TinySamError("COCO annotations need pycocotools: pip install 'tinysam-edge[eval]'") from exc
    data = read_json(annotations, "annotations")
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise TinySamError(f"{annotations} is not a COCO instances file (needs images, annotations, categories)")
    check_instances(data, Path(annotations))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _entry(kind: str, i: int, entry: object) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{i}]" + (f" (id {ident})" if ident is not None else "")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def segmentation_problem(segmentation: object) -> str | None:
    """Why ``segmentation`` is neither polygons (a non-empty list of even-length coordinate lists) nor an RLE, or None."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size) and isinstance(counts, (str, list)):
            return None
        return "is not an RLE (size [h, w] and counts)"
    if not isinstance(segmentation, list) or not segmentation:
        return "is empty" if segmentation in ([], "", None) else "is neither polygons nor an RLE"
    if not all(isinstance(poly, list) and poly and len(poly) % 2 == 0 for poly in segmentation):
        return "holds a polygon that is not a non-empty list of x, y coordinates"
    return None


def check_instances(data: dict, path: Path) -> None:
    """One line naming the entry and the key for a COCO instances file that COCOeval would crash on.

    Images need an integer ``id``, a ``file_name`` and positive ``width``/``height``; annotations an
    integer ``id``, ``image_id`` (of a listed image) and ``category_id``, a ``segmentation``
    (polygons or RLE, not empty), ``iscrowd`` (0 or 1) and a finite ``area``.
    """
    images, annotations = data["images"], data["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise TinySamError(f"{path}: 'images' and 'annotations' must be lists")
    for i, img in enumerate(images):
        where = f"{path}: {_entry('images', i, img)}"
        if not isinstance(img, dict):
            raise TinySamError(f"{where} is not an object")
        for key, ok in (
            ("id", _is_int(img.get("id"))),
            ("file_name", isinstance(img.get("file_name"), str) and img.get("file_name")),
            ("width", _is_int(img.get("width")) and img["width"] > 0),
            ("height", _is_int(img.get("height")) and img["height"] > 0),
        ):
            if not ok:
                raise TinySamError(f"{where} lacks '{key}'" if key not in img else f"{where} has an invalid '{key}' ({_shown(img[key])})")
    listed = {img["id"] for img in images}
    for i, ann in enumerate(annotations):
        where = f"{path}: {_entry('annotations', i, ann)}"
        if not isinstance(ann, dict):
            raise TinySamError(f"{where} is not an object")
        for key in ("id", "image_id", "category_id", "segmentation", "iscrowd", "area"):
            if key not in ann:
                raise TinySamError(f"{where} lacks '{key}'")
        bad = next((k for k in ("id", "image_id", "category_id") if not _is_int(ann[k])), None)
        if bad:
            raise TinySamError(f"{where} has an invalid '{bad}' ({_shown(ann[bad])})")
        if ann["image_id"] not in listed:
            raise TinySamError(f"{where} has 'image_id' {ann['image_id']}, which no image has")
        problem = segmentation_problem(ann["segmentation"])
        if problem:
            raise TinySamError(f"{where}: 'segmentation' {problem}")
        if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], float):
            raise TinySamError(f"{where} has an invalid 'iscrowd' ({_shown(ann['iscrowd'])}; 0 or 1)")
        area = ann["area"]
        if not isinstance(area, (int, float)) or isinstance(area, bool) or not math.isfinite(area) or area < 0:
            raise TinySamError(f"{where} has an invalid 'area' ({_shown(area)})")


def _shown(value: object) -> str:
    return str(value)[:60]
