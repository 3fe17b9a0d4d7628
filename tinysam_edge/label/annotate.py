"""Masks for one image and the records the shards hold: one JSON line per image, one annotation per mask.

Every engine labels through ``Labeller``, so local and Ray jobs write the same bytes. Annotation
``bbox`` values are COCO's: pycocotools' ``toBbox`` of the mask's RLE (the far pixel edges, so a
one-pixel mask is 1 x 1), the convention COCO tools, CVAT and Label Studio expect.
"""

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..devices import device_family
from ..errors import TinySamError
from ..image import load_image
from ..mask_generator import UPSCALE_BUDGET_PIXELS
from ..masks import MASK_THRESHOLD, box_xywh, encode_rle, mask_to_box
from .inputs import OBJECT_CATEGORY

#: SAM's stability offset: the IoU of the masks thresholded at logit +1 and -1.
STABILITY_OFFSET = 1.0
#: Box prompts per decoder call (fewer on images too large for that many full-size logits).
BOX_BATCH = 32
#: What a bad image raises while it is read or labelled; anything else stops the job (it can be resumed).
IMAGE_ERRORS = (TinySamError, ValueError, OSError, cv2.error)


@dataclass(frozen=True)
class Task:
    """What to prompt: ``"boxes"`` (detections per image id) or ``"everything"`` (generator settings)."""

    mode: str
    everything: dict = field(default_factory=dict)


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


def stability_scores(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) logits -> (C,) SAM stability: IoU of the masks at ``MASK_THRESHOLD`` +/- ``STABILITY_OFFSET``."""
    inner = np.count_nonzero(logits > MASK_THRESHOLD + STABILITY_OFFSET, axis=(1, 2))
    outer = np.count_nonzero(logits > MASK_THRESHOLD - STABILITY_OFFSET, axis=(1, 2))
    return np.divide(inner, outer, out=np.zeros(len(logits)), where=outer > 0)


class Labeller:
    """A predictor (and everything-mode generator) that turns decoded images into shard lines. One per thread or actor."""

    def __init__(
        self, model_dir: str | Path, task: Task, device: str = "CPU", precision: str | None = None, num_threads: int | None = None
    ) -> None:
        from ..predictor import Predictor

        self.task = task
        threads = num_threads if device_family(device) == "CPU" else None  # other devices schedule themselves
        self.predictor = Predictor(model_dir, device=device, precision=precision, num_threads=threads)
        self.generator = None
        if task.mode == "everything":
            from ..mask_generator import HierarchicalMaskGenerator, MaskGenerator

            options = dict(task.everything)
            if options.pop("mode") == "hierarchical":
                self.generator = HierarchicalMaskGenerator(self.predictor, **options)
            else:
                options.pop("high_score_thresh", None)
                self.generator = MaskGenerator(self.predictor, **options)

    def line(self, head: dict, image: np.ndarray | None, detections: list[dict] | None = None, error: str | None = None) -> dict:
        """The shard line of one image: ``head`` (index, image_id, file_name) plus size and annotations, or the error."""
        if error is None:
            try:
                annotations = self._boxes(image, detections or []) if self.task.mode == "boxes" else self._everything(image)
                return {**head, "height": int(image.shape[0]), "width": int(image.shape[1]), "annotations": annotations}
            except IMAGE_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
        return {**head, "error": error}

    def _boxes(self, image: np.ndarray, detections: list[dict]) -> list[dict]:
        self.predictor.set_image(image)
        h, w = self.predictor.original_size
        out, step = [], max(1, min(BOX_BATCH, UPSCALE_BUDGET_PIXELS // (h * w)))  # bounds the full-size logits held at once
        for start in range(0, len(detections), step):
            chunk = detections[start : start + step]
            boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in chunk)], dtype=np.float64)
            boxes = np.clip(boxes, 0, [w, h, w, h])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
            low_res, iou = self.predictor.decode_batch(boxes=boxes, multimask_output=False)
            logits = self.predictor.upscale(low_res[:, 0])
            for det, box, mask_logits, score, stability in zip(chunk, boxes, logits, iou[:, 0], stability_scores(logits)):
                prompt = {"box": box_xywh(np.round(box))}
                out.append(annotation(mask_logits > MASK_THRESHOLD, det["category_id"], det["score"], score, stability, prompt))
        return out

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
