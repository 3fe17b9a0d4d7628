"""What a worker thread does with a predictor: embed an image, decode prompts, segment everything; results as JSON-ready dicts."""

import time

import cv2
import numpy as np

from ..everything_settings import EverythingSettings
from ..mask_generator import make_generator
from ..masks import box_xywh, encode_rle, mask_to_box
from ..predictor import ImageSnapshot, PredictorBase
from .schema import PromptRequest


def milliseconds(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage -> milliseconds rounded to 0.1."""
    return {k: round(v * 1000, 1) for k, v in timings.items()}


def embed(predictor: PredictorBase, image: np.ndarray) -> tuple[ImageSnapshot, dict[str, float]]:
    """Run the encoder on an HxWx3 uint8 RGB image: its snapshot and stage seconds."""
    predictor.set_image(image)
    return predictor.get_image_state(), dict(predictor.timings)


def predict(
    predictor: PredictorBase, snapshot: ImageSnapshot, prompts: PromptRequest
) -> tuple[np.ndarray, np.ndarray, ImageSnapshot, dict[str, float]]:
    """Masks (C, H, W) bool and scores (C,) for prompts on a cached image, its updated snapshot and the stage seconds."""
    start = time.perf_counter()
    predictor.set_image_state(snapshot)
    predictor.timings = {"restore": time.perf_counter() - start}
    masks, scores, _ = predictor.predict(prompts.coords, prompts.labels, prompts.box, multimask_output=prompts.multimask_output)
    start = time.perf_counter()
    updated = predictor.get_image_state()
    timings = {**predictor.timings, "snapshot": time.perf_counter() - start}
    return masks, scores, updated, timings


def everything(
    predictor: PredictorBase, snapshot: ImageSnapshot, settings: EverythingSettings
) -> tuple[list[dict], ImageSnapshot, dict[str, float]]:
    """SAM's automatic-mask-generator records of a cached image (no second encoder run), its updated snapshot and stage seconds."""
    predictor.set_image_state(snapshot)
    generator = make_generator(predictor, settings)
    records = generator.generate()
    return records, predictor.get_image_state(), generator.stats["seconds"]


def mask_records(masks: np.ndarray, scores: np.ndarray) -> list[dict]:
    """(C, H, W) bool masks and (C,) scores -> ``{"segmentation": COCO RLE, "score", "area", "bbox": XYWH}`` each."""
    return [
        {"segmentation": encode_rle(mask), "score": float(score), "area": int(mask.sum()), "bbox": box_xywh(mask_to_box(mask))}
        for mask, score in zip(masks, scores)
    ]


def mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> 8-bit grayscale PNG, 255 inside the mask."""
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("OpenCV could not encode the mask as PNG")
    return encoded.tobytes()
