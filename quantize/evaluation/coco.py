"""Zero-shot instance segmentation on COCO (TinySAM's protocol): every detection box -> best mask -> COCOeval "segm"."""

import contextlib
import io
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinysam_edge import load_image
from tinysam_edge.coco import load_ground_truth, read_json
from tinysam_edge.errors import TinySamError
from tinysam_edge.masks import MASK_THRESHOLD, encode_rle
from tinysam_edge.predictor import PredictorBase

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BOX_BATCH = 32


def _cocoeval():
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise TinySamError("COCO evaluation needs pycocotools: pip install 'tinysam-edge[eval]'") from exc
    return COCOeval


def check_detections(
    detections: object, image_files: dict[int, Path], categories: set[int], image_ids: list[int] | None = None
) -> tuple[list[dict], dict]:
    """Validate COCO-format detections against the ground truth; returns the usable ones and counted warnings.

    Unknown image ids, missing image files, malformed entries and an empty list are errors (they
    would silently change AP); detections of categories the ground truth lacks are dropped and counted.
    """
    if not isinstance(detections, list) or not detections:
        raise TinySamError("the detections file holds no detections (expected a non-empty COCO results list)")
    for i, det in enumerate(detections):
        if not isinstance(det, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(det) or not _numbers(det["bbox"], 4):
            raise TinySamError(
                f"detection {i} is not a COCO result with image_id, category_id, bbox [x, y, w, h] and score: {str(det)[:120]}"
            )
        if not _numbers([det["score"]], 1) or not math.isfinite(det["score"]):  # NaN or inf would make the results file invalid JSON
            raise TinySamError(f"detection {i} has a non-finite or non-numeric score ({str(det['score'])[:40]}): {str(det)[:120]}")
        if not all(math.isfinite(v) for v in det["bbox"]):
            raise TinySamError(f"detection {i} has a non-finite bbox: {str(det)[:120]}")
    unknown = sorted({d["image_id"] for d in detections} - set(image_files))
    if unknown:
        raise TinySamError(f"{len(unknown)} image ids of the detections are not in the annotations (first: {unknown[:5]})")
    wanted = set(image_ids) if image_ids is not None else set(image_files)
    missing = sorted(str(image_files[i].name) for i in wanted if not image_files[i].is_file())
    if missing:
        raise TinySamError(f"{len(missing)} images are missing from {next(iter(image_files.values())).parent} (first: {missing[:3]})")
    usable = [d for d in detections if d["image_id"] in wanted and d["category_id"] in categories]
    warnings = {"unknown_category": sum(d["category_id"] not in categories for d in detections if d["image_id"] in wanted)}
    return usable, warnings


def _numbers(values: object, count: int) -> bool:
    """``values`` is a list of ``count`` real numbers (not booleans)."""
    return (
        isinstance(values, list) and len(values) == count and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    )


def segment_detections(
    predictor: PredictorBase,
    image_files: dict[int, Path],
    detections: list[dict],
    progress: bool = True,
    sizes: dict[int, tuple[int, int]] | None = None,
) -> tuple[list[dict], dict]:
    """Box-prompt every detection, keep the best-IoU mask (tokens 1..3) as COCO RLE; drop the detector's bbox.

    Detections are grouped by image, so the encoder runs once per image whatever their order. Boxes
    reaching outside the image are clipped to it (counted). Images whose real (H, W) differs from
    ``sizes`` (the annotations') are counted and the first one is reported on stderr, once.
    """
    by_image = defaultdict(list)
    for det in detections:
        by_image[det["image_id"]].append(det)
    results, clipped, resized = [], 0, 0
    for image_id in tqdm(sorted(by_image), desc="segmenting", unit="image", disable=not progress):
        predictor.set_image(load_image(image_files[image_id]))
        h, w = predictor.original_size
        if sizes is not None and sizes.get(image_id, (h, w)) != (h, w):
            if not resized:
                ah, aw = sizes[image_id]
                tqdm.write(
                    f"warning: image {image_id} ({image_files[image_id].name}) is {w}x{h} but the annotations say {aw}x{ah}; "
                    "masks and ground truth of such images are not comparable (counted as size_mismatch)",
                    file=sys.stderr,
                )
            resized += 1
        dets = by_image[image_id]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in dets)], dtype=np.float64)
        inside = np.clip(boxes, 0, [w, h, w, h])
        clipped += int((inside != boxes).any(axis=1).sum())
        inside[:, 2:] = np.maximum(inside[:, 2:], inside[:, :2])
        for start in range(0, len(dets), BOX_BATCH):
            low_res, _ = predictor.decode_batch(boxes=inside[start : start + BOX_BATCH], multimask_output=False)
            masks = predictor.upscale(low_res[:, 0]) > MASK_THRESHOLD
            for det, mask in zip(dets[start : start + BOX_BATCH], masks):
                results.append(
                    {"image_id": image_id, "category_id": det["category_id"], "score": det["score"], "segmentation": encode_rle(mask)}
                )
    return results, {"clipped_boxes": clipped} | ({"size_mismatch": resized} if sizes is not None else {})


def evaluate_segm(coco, results: list[dict], image_ids: list[int]) -> tuple[dict[str, float], str]:
    """COCOeval "segm" with default parameters on ``image_ids``; returns the 12 stats and the printed summary."""
    COCOeval = _cocoeval()
    if not results:
        raise TinySamError("no results to evaluate")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes([dict(r) for r in results])
    evaluator = COCOeval(coco, dt, "segm")
    evaluator.params.imgIds = sorted(image_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    lines = [line for line in summary.getvalue().splitlines() if line.startswith(" Average")]
    return dict(zip(STAT_NAMES, (float(v) for v in evaluator.stats))), "\n".join(lines)


def top_per_image(detections: list[dict], keep: int) -> list[dict]:
    """The ``keep`` best-scored detections of every image (stable on ties), in their original order otherwise."""
    by_image = defaultdict(list)
    for i, det in enumerate(detections):
        by_image[det["image_id"]].append(i)
    chosen = set()
    for indices in by_image.values():
        order = np.argsort([-float(detections[i]["score"]) for i in indices], kind="stable")[:keep]
        chosen.update(indices[j] for j in order)
    return [det for i, det in enumerate(detections) if i in chosen]


@dataclass
class Job:
    """Validated inputs of one evaluation: evaluated image ids and their files, the usable detections, the scorer."""

    image_files: dict[int, Path]
    image_ids: list[int]
    detections: list[dict]
    warnings: dict
    evaluate: Callable[[list[dict], list[int]], tuple[dict, str]]
    sizes: dict[int, tuple[int, int]] | None = None


def prepare(
    coco, image_files: dict[int, Path], detections: str | Path, evaluate: Callable, limit: int | None = None, per_image: int | None = None
) -> Job:
    """Read and check the detections against the ground truth ``coco`` before any model runs.

    ``image_files`` maps every ground-truth image id to its file; ``limit`` keeps the first N ids;
    ``per_image`` keeps only that many best-scored detections per image (the rest could not count);
    ``evaluate(results, image_ids)`` returns the stats and a printable summary.
    """
    image_ids = sorted(image_files)[:limit] if limit else sorted(image_files)
    dets, warnings = check_detections(read_json(detections, "detections"), image_files, set(coco.getCatIds()), image_ids)
    if not dets:
        raise TinySamError("no detection refers to the evaluated images with a known category")
    if per_image is not None:
        kept = top_per_image(dets, per_image)
        warnings["beyond_top_per_image"] = len(dets) - len(kept)
        dets = kept
    sizes = {i: (img["height"], img["width"]) for i, img in coco.imgs.items()}
    return Job(image_files, image_ids, dets, warnings, evaluate, sizes)


def run_job(predictor: PredictorBase, job: Job, progress: bool = True) -> dict:
    """Box-prompt every detection of ``job`` and score the masks: stats, summary, counts, warnings and the results list."""
    results, seg_warnings = segment_detections(predictor, job.image_files, job.detections, progress, job.sizes)
    stats, summary = job.evaluate(results, job.image_ids)
    report = {"stats": stats, "summary": summary, "images": len(job.image_ids), "detections": len(job.detections)}
    return report | {"warnings": job.warnings | seg_warnings, "results": results}


def prepare_coco(images_dir: str | Path, annotations: str | Path, detections: str | Path, limit: int | None = None) -> Job:
    """The COCO protocol's inputs: ``file_name`` under ``images_dir``, every detection, COCOeval segm."""
    coco = load_ground_truth(annotations)
    image_files = {i: Path(images_dir) / img["file_name"] for i, img in coco.imgs.items()}
    return prepare(coco, image_files, detections, lambda results, ids: evaluate_segm(coco, results, ids), limit)


def run_coco_eval(predictor: PredictorBase, images_dir: str | Path, annotations: str | Path, detections: str | Path, limit: int | None = None, progress: bool = True) -> dict:  # fmt: skip
    """The whole COCO protocol: validate inputs, segment every detection, COCOeval; returns stats, summary and results."""
    return run_job(predictor, prepare_coco(images_dir, annotations, detections, limit), progress)
