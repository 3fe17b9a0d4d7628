"""Masks for one image and the records the shards hold: one JSON line per image, one annotation per mask.

Every engine labels through ``Labeller``, so local and Ray jobs write the same bytes. Annotation
``bbox`` values are COCO's: pycocotools' ``toBbox`` of the mask's RLE (the far pixel edges, so a
one-pixel mask is 1 x 1), the convention COCO tools, CVAT and Label Studio expect.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..amg import stability_score
from ..devices import device_family
from ..errors import TinySamError
from ..everything_settings import EverythingSettings
from ..image import load_image
from ..mask_generator import make_generator
from ..masks import MASK_THRESHOLD, box_xywh, encode_rle, mask_to_box
from .inputs import OBJECT_CATEGORY

#: Box prompts per decoder call (fewer on images too large for that many full-size logits).
BOX_BATCH = 32
#: Full-resolution float32 logits held at once while a box batch is upscaled (about 256 MB).
UPSCALE_BUDGET_PIXELS = 64 * 1024 * 1024
#: What a bad image raises while it is read or labelled; anything else stops the job (it can be resumed).
IMAGE_ERRORS = (TinySamError, ValueError, OSError, cv2.error)


@dataclass(frozen=True)
class Task:
    """What to prompt: ``"boxes"`` (detections per image id) or ``"everything"`` (with its generator settings)."""

    mode: str
    everything: EverythingSettings | None = None

    def __post_init__(self) -> None:
        if isinstance(self.everything, dict):  # as Ray ships it (``asdict``)
            object.__setattr__(self, "everything", EverythingSettings(**self.everything))


def annotation(mask: np.ndarray, category_id: int, score: float, predicted_iou: float, stability: float, prompt: dict) -> dict:
    """One mask (H, W) bool -> its record: COCO RLE, area, COCO ``bbox`` [x, y, w, h] (pixel edges, as ``toBbox``), scores and the prompt."""
    return {
        "category_id": int(category_id),
        "score": float(score),
        "predicted_iou": float(predicted_iou),
        "stability_score": float(stability),
        "segmentation": encode_rle(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": box_xywh(mask_to_box(mask, pixel_edges=True)),
        "prompt": prompt,
    }


class Labeller:
    """A predictor (and everything-mode generator) that turns decoded images into shard lines. One per thread or actor."""

    def __init__(
        self,
        model_dir: str | Path,
        task: Task,
        device: str = "CPU",
        precision: str | None = None,
        num_threads: int | None = None,
        sessions: int = 1,
    ) -> None:
        from ..predictor import Predictor

        self.task = task
        threads = num_threads if device_family(device) == "CPU" else None  # other devices schedule themselves
        # the labellers of one process share one compiled model, with a stream for each of its ``sessions``
        self.predictor = Predictor(model_dir, device=device, precision=precision, num_threads=threads, sessions=sessions)
        self.generator = make_generator(self.predictor, task.everything) if task.mode == "everything" else None

    def line(self, head: dict, image: np.ndarray | None, detections: list[dict] | None = None, error: str | None = None) -> dict:
        """The shard line of one image: ``head`` (index, image_id, file_name) plus size and annotations, or the error.

        Detector boxes that are empty inside the image are listed under ``dropped_boxes`` (as given), not prompted.
        """
        if error is None:
            try:
                annotations, dropped = self._boxes(image, detections or []) if self.task.mode == "boxes" else (self._everything(image), [])
                size = {"height": int(image.shape[0]), "width": int(image.shape[1])}
                return {**head, **size, "annotations": annotations, **({"dropped_boxes": dropped} if dropped else {})}
            except IMAGE_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
        return {**head, "error": error}

    def _boxes(self, image: np.ndarray, detections: list[dict]) -> tuple[list[dict], list[list[float]]]:
        """Masks of the boxes clipped to the image, and the boxes dropped because nothing of them is inside it."""
        h, w = image.shape[:2]
        corners = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in detections)], dtype=np.float64)
        clipped = np.clip(corners.reshape(-1, 4), 0, [w, h, w, h])
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # a zero-size box would prompt a full-image mask
        dropped = [d["bbox"] for d, keep in zip(detections, inside) if not keep]
        detections, all_boxes = [d for d, keep in zip(detections, inside) if keep], clipped[inside]
        if not detections:
            return [], dropped
        self.predictor.set_image(image)
        out, step = [], max(1, min(BOX_BATCH, UPSCALE_BUDGET_PIXELS // (h * w)))  # bounds the full-size logits held at once
        for start in range(0, len(detections), step):
            chunk, boxes = detections[start : start + step], all_boxes[start : start + step]
            low_res, iou = self.predictor.decode_batch(boxes=boxes, multimask_output=False)
            logits = self.predictor.upscale(low_res[:, 0])
            stability = stability_score(logits, EverythingSettings.stability_score_offset)  # SAM's offset, as everything mode
            for det, box, mask_logits, score, stable in zip(chunk, boxes, logits, iou[:, 0], stability):
                prompt = {"box": box_xywh(np.round(box))}
                out.append(annotation(mask_logits > MASK_THRESHOLD, det["category_id"], det["score"], score, stable, prompt))
        return out, dropped

    def _everything(self, image: np.ndarray) -> list[dict]:
        records = self.generator.generate(image)
        return [
            annotation(
                r["segmentation"],
                OBJECT_CATEGORY["id"],
                r["predicted_iou"],
                r["predicted_iou"],
                r["stability_score"],
                {"point": r["point_coords"][0]},
            )
            for r in records
        ]


def decode(path: str | Path) -> tuple[np.ndarray | None, str | None]:
    """Read one image: (HxWx3 uint8 RGB, None), or (None, the reason it cannot be read)."""
    try:
        return load_image(path), None
    except IMAGE_ERRORS as exc:
        return None, str(exc)
