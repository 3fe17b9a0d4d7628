"""Accuracy of a candidate model dir (e.g. INT8) against a reference (FP32) on real images and prompts."""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinysam_edge import load_image
from tinysam_edge.coco import load_ground_truth
from tinysam_edge.object_prompts import coco_objects, image_rng, model_objects, prompts_for_objects
from tinysam_edge.predictor import PredictorBase


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare_predictors(
    reference: PredictorBase,
    candidate: PredictorBase,
    images: list[Path],
    annotations: str | Path | None = None,
    objects_per_image: int = 4,
    progress: bool = True,
) -> dict:
    """Best-mask IoU and IoU-score error of ``candidate`` vs ``reference``, for point and box prompts.

    Objects come from COCO ``annotations`` (ground-truth masks, largest first) when given, else from
    the reference model's own masks for seeded random clicks; each object yields one interior point
    prompt and one box prompt, so every run compares the same prompts.
    """
    coco = ids_by_name = None
    if annotations is not None:
        coco = load_ground_truth(annotations)
        ids_by_name = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    rows, skipped = [], []
    for path in tqdm(images, desc="comparing", unit="image", disable=not progress):
        image = load_image(path)
        if coco is not None and path.name not in ids_by_name:
            skipped.append(path.name)
            continue
        reference.set_image(image)
        candidate.set_image(image)
        rng = image_rng(path)
        if coco is not None:
            objects = coco_objects(coco, ids_by_name[path.name], objects_per_image)
        else:
            objects = model_objects(reference, rng, objects_per_image)
        for prompt in prompts_for_objects(objects, rng):
            ref_masks, ref_scores, _ = reference.predict(**prompt.kwargs(), multimask_output=False)
            cand_masks, cand_scores, _ = candidate.predict(**prompt.kwargs(), multimask_output=False)
            rows.append(
                {
                    "image": path.name,
                    "kind": prompt.kind,
                    "iou": mask_iou(ref_masks[0], cand_masks[0]),
                    "score_error": float(abs(ref_scores[0] - cand_scores[0])),
                }
            )
    return {
        "objects": "annotations" if coco is not None else "reference-model masks",
        "images": len(images) - len(skipped),
        "skipped_images": skipped,
        "summary": summarize(rows),
        "prompts": rows,
    }


def everything_agreement(reference: PredictorBase, candidate: PredictorBase, image: np.ndarray, min_iou: float = 0.9, **options) -> dict:
    """How many of the reference's hierarchical everything-mode masks the candidate reproduces (mask IoU >= ``min_iou``).

    ``options`` go to both ``HierarchicalMaskGenerator``s. Each reference mask is matched to its best
    candidate mask; the report counts matches and both mask counts.
    """
    from tinysam_edge import HierarchicalMaskGenerator

    ref = [r["segmentation"] for r in HierarchicalMaskGenerator(reference, **options).generate(image)]
    cand = [r["segmentation"] for r in HierarchicalMaskGenerator(candidate, **options).generate(image)]
    best = [max((mask_iou(r, c) for c in cand), default=0.0) for r in ref]
    matched = int(sum(b >= min_iou for b in best))
    return {
        "reference_masks": len(ref),
        "candidate_masks": len(cand),
        "matched": matched,
        "matched_fraction": matched / len(ref) if ref else 1.0,
        "min_iou": min_iou,
    }


def summarize(rows: list[dict]) -> dict:
    """Mean and 5th-percentile IoU and mean absolute score error per prompt kind."""
    summary = {}
    for kind in ("point", "box"):
        ious = np.array([r["iou"] for r in rows if r["kind"] == kind])
        errors = np.array([r["score_error"] for r in rows if r["kind"] == kind])
        if ious.size:
            summary[kind] = {
                "prompts": int(ious.size),
                "mean_iou": float(ious.mean()),
                "p5_iou": float(np.percentile(ious, 5)),
                "mean_abs_score_error": float(errors.mean()),
            }
    return summary


def format_summary(report: dict) -> str:
    """A Markdown table of a ``compare_predictors`` report."""
    lines = [
        f"{report['images']} images, objects from {report['objects']}",
        "",
        "| prompts | n | mean best-mask IoU | 5th pct IoU | mean abs IoU-score error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, s in report["summary"].items():
        lines.append(f"| {kind} | {s['prompts']} | {s['mean_iou']:.4f} | {s['p5_iou']:.4f} | {s['mean_abs_score_error']:.4f} |")
    if "everything" in report:
        e = report["everything"]
        lines += [
            "",
            f"everything mode: {e['matched']} of {e['reference_masks']} reference masks matched at IoU >= {e['min_iou']} ({e['matched_fraction']:.1%}); candidate has {e['candidate_masks']}",
        ]
    return "\n".join(lines)
