"""COCO-format files: JSON reading with one clear error, and the ground truth as a pycocotools ``COCO`` object (``[eval]`` extra)."""

import contextlib
import io
import json
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
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
