"""Zero-shot instance segmentation on LVIS v1: federated mask AP, numerically equal to lvis-api 0.5.3's ``LVISEval``.

Written on numpy and ``pycocotools.mask`` (the ``lvis`` package itself pins opencv-python and calls
``np.float``). The rules it follows:

- at most 300 detections per image (the best-scored, stable on ties), chosen before anything else;
- ground truth and detections with area 0 take no part; a detection's area is its mask's, or its
  box's (w * h) when the results carry boxes;
- federated: on an image, a category is evaluated only if it is annotated there or listed in
  ``neg_category_ids``; unmatched detections of a category in ``not_exhaustive_category_ids`` are ignored;
- greedy matching per IoU threshold (0.50:0.95), 101 recall points, area ranges all, small [0, 32^2],
  medium [32^2, 96^2], large [96^2, 1e10] (bounds inclusive, as in the reference); AP per category,
  averaged over the categories where it is defined, overall and per frequency group (rare / common / frequent).
"""

import contextlib
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from tinysam_edge.coco import read_json, segmentation_problem
from tinysam_edge.errors import TinySamError
from tinysam_edge.predictor import PredictorBase

from .coco import Job, prepare, run_job, top_per_image

MAX_DETS = 300
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf") + tuple(f"AR{s}@{MAX_DETS}" for s in ("", "s", "m", "l"))
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
FREQUENCIES = ("r", "c", "f")
RESULT_KEYS = frozenset({"image_id", "category_id", "score", "segmentation"})
ANNOTATION_KEYS = frozenset({"id", "image_id", "category_id", "segmentation", "area"})


def _mask_utils():
    try:
        import pycocotools.mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise TinySamError("LVIS evaluation needs pycocotools: pip install 'tinysam-edge[eval]'") from exc
    return mask_utils, COCO


def _check_lvis(data: object, path: Path) -> None:
    """One-line errors for a file that is not LVIS-format (federated lists, frequencies, annotation fields)."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise TinySamError(f"{path} is not an LVIS annotation file (needs images, annotations, categories lists)")
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "height", "width"} <= set(img):
            raise TinySamError(f"{path}: image entry without id, height and width: {str(img)[:120]}")
        if not all(isinstance(img.get(k), list) for k in ("neg_category_ids", "not_exhaustive_category_ids")):
            raise TinySamError(f"{path}: image {img['id']} lacks neg_category_ids / not_exhaustive_category_ids (a COCO file, not LVIS?)")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or cat.get("frequency") not in FREQUENCIES:
            raise TinySamError(f"{path}: category without an id and a frequency r, c or f: {str(cat)[:120]}")
    images = {img["id"] for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not ANNOTATION_KEYS <= set(ann) or ann["image_id"] not in images:
            raise TinySamError(f"{path}: annotation without {', '.join(sorted(ANNOTATION_KEYS))} (of a listed image): {str(ann)[:120]}")
        problem = segmentation_problem(ann["segmentation"])
        if problem:
            raise TinySamError(f"{path}: annotations[{i}] (id {ann['id']}): 'segmentation' {problem}")


def load_lvis(annotations: str | Path):
    """The LVIS ground truth as a pycocotools ``COCO`` object, after checking the LVIS fields."""
    _, COCO = _mask_utils()
    data = read_json(annotations, "annotations")
    _check_lvis(data, Path(annotations))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def lvis_image_files(coco, images_dir: str | Path) -> dict[int, Path]:
    """Image id -> file: ``file_name`` if given, else the ``coco_url`` name, in ``images_dir`` or its split folder (val2017/...)."""
    root, files = Path(images_dir), {}
    for image_id, img in coco.imgs.items():
        parts = str(img.get("file_name") or img.get("coco_url") or f"{image_id:012d}.jpg").split("/")
        flat, nested = root / parts[-1], root / "/".join(parts[-2:])
        files[image_id] = nested if not flat.is_file() and nested.is_file() else flat
    return files


def _detection_areas(results: list[dict]) -> np.ndarray:
    """Areas as the reference takes them: w * h of the box when the results carry boxes, else the mask area.  (N,)"""
    mask_utils, _ = _mask_utils()
    with_box = ["bbox" in r for r in results]
    if any(with_box) and not all(with_box):
        raise TinySamError("either every result carries a bbox (its area is then w * h) or none does (the mask area is used)")
    if all(with_box):
        return np.array([float(r["bbox"][2]) * float(r["bbox"][3]) for r in results])
    return np.array([float(mask_utils.area(r["segmentation"])) for r in results])


def _federated_pairs(coco, results: list[dict], areas: np.ndarray, image_ids: list[int]) -> tuple[dict, dict]:
    """Ground truth and detections (with their areas) per (image, category), after the area-0 and federated filters."""
    gts, dts = defaultdict(list), defaultdict(list)
    negative = {i: set(coco.imgs[i]["neg_category_ids"]) for i in image_ids}
    categories = set(coco.cats)
    for image_id in image_ids:
        for ann in coco.imgToAnns[image_id]:
            if 0 < ann["area"] < float("inf") and ann["category_id"] in categories:
                gts[image_id, ann["category_id"]].append(ann)
    for res, area in zip(results, areas):
        key = (res["image_id"], res["category_id"])
        if key[0] not in negative or key[1] not in categories or not 0 < area < float("inf"):
            continue
        if key in gts or key[1] in negative[key[0]]:
            dts[key].append((res, area))
    return gts, dts


def _match(ious: np.ndarray, gt_ignored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections to ground truth (ignored last), every IoU threshold at once.

    ``ious`` (D, G), ``gt_ignored`` (G,) bool. A detection takes the best still-free ground truth with
    IoU >= threshold (the last one on ties), preferring non-ignored ones. Returns matched and
    matched-to-ignored, both (T, D) bool.
    """
    t, (d, g) = len(IOU_THRESHOLDS), ious.shape
    matched, on_ignored = np.zeros((t, d), bool), np.zeros((t, d), bool)
    if d == 0 or g == 0:
        return matched, on_ignored
    taken = np.zeros((t, g), bool)
    floor = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    rows = np.arange(t)
    for i in range(d):
        eligible = ~taken & (ious[i][None, :] >= floor)
        regular = eligible & ~gt_ignored[None, :]
        pool = np.where(regular.any(axis=1, keepdims=True), regular, eligible)
        found = pool.any(axis=1)
        values = np.where(pool, ious[i][None, :], -1.0)[:, ::-1]
        best = g - 1 - np.argmax(values, axis=1)
        matched[found, i] = True
        on_ignored[found, i] = gt_ignored[best[found]]
        taken[rows[found], best[found]] = True
    return matched, on_ignored


def _evaluate_pairs(coco, gts: dict, dts: dict) -> dict:
    """Per (category, area range): a list over images (in id order) of (scores (D,), matched (T, D), ignored (T, D), ground-truth count)."""
    mask_utils, _ = _mask_utils()
    per_cell = defaultdict(list)
    for image_id, cat_id in sorted(set(gts) | set(dts)):
        gt = gts.get((image_id, cat_id), [])
        dt = dts.get((image_id, cat_id), [])
        dt = [dt[j] for j in np.argsort([-d[0]["score"] for d in dt], kind="stable")]
        scores = np.array([d[0]["score"] for d in dt], dtype=np.float64)
        dt_areas = np.array([d[1] for d in dt], dtype=np.float64)
        ious = np.zeros((len(dt), len(gt)))
        if dt and gt:
            ious = np.asarray(mask_utils.iou([d[0]["segmentation"] for d in dt], [coco.annToRLE(a) for a in gt], [0] * len(gt)))
            ious = ious.reshape(len(dt), len(gt))
        gt_areas = np.array([a["area"] for a in gt], dtype=np.float64)
        flagged = np.array([bool(a.get("ignore", 0)) for a in gt], dtype=bool)
        not_exhaustive = cat_id in coco.imgs[image_id]["not_exhaustive_category_ids"]
        for area_index, (low, high) in enumerate(AREA_RANGES):
            gt_ignored = flagged | (gt_areas < low) | (gt_areas > high)
            order = np.argsort(gt_ignored, kind="stable")
            matched, ignored = _match(ious[:, order], gt_ignored[order])
            forgiven = not_exhaustive | (dt_areas < low) | (dt_areas > high)
            ignored |= ~matched & forgiven[None, :]
            per_cell[cat_id, area_index].append((scores, matched, ignored, int((~gt_ignored).sum())))
    return per_cell


def _precision_recall(entries: list[tuple]) -> tuple[np.ndarray, np.ndarray] | None:
    """Interpolated precision at the 101 recall points (T, R) and final recall (T,) of one cell; None where it has no ground truth."""
    n_gt = sum(e[3] for e in entries)
    if n_gt == 0:
        return None
    order = np.argsort(-np.concatenate([e[0] for e in entries]), kind="stable")
    matched = np.concatenate([e[1] for e in entries], axis=1)[:, order]
    ignored = np.concatenate([e[2] for e in entries], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    n_det = tp.shape[1]
    if n_det == 0:
        return np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS))), np.zeros(len(IOU_THRESHOLDS))
    recall = tp / n_gt
    precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
    at_points = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        index = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        inside = index < n_det
        at_points[t, inside] = precision[t, index[inside]]
    return at_points, recall[:, -1]


def _mean_defined(values: np.ndarray) -> float:
    """Mean over the entries that are defined (> -1); -1 when none is."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _summary_line(name: str, value: float) -> str:
    """One printable line per number, naming its IoU, area range and frequency group."""
    iou = {"AP50": "0.50", "AP75": "0.75"}.get(name, "0.50:0.95")
    letter = name[2] if len(name) > 2 else ""
    area = {"s": "small", "m": "medium", "l": "large"}.get(letter, "all")
    group = {"r": "rare", "c": "common", "f": "frequent"}.get(letter, "all")
    kind = "Average Recall   " if name.startswith("AR") else "Average Precision"
    return f" {kind} {name:<8} IoU={iou:<9} area={area:>6} categories={group:<8} maxDets={MAX_DETS} = {value:.3f}"


def evaluate_lvis(coco, results: list[dict], image_ids: list[int] | None = None) -> tuple[dict[str, float], str]:
    """LVIS federated mask AP of ``results`` (COCO results with RLE ``segmentation``) on ``image_ids`` (default all).

    Returns the 13 numbers of the reference (-1 where undefined) and a printable summary.
    """
    if not results:
        raise TinySamError("no results to evaluate")
    bad = next((r for r in results if not isinstance(r, dict) or not RESULT_KEYS <= set(r)), None)
    if bad is not None:
        raise TinySamError(f"a result lacks {', '.join(sorted(RESULT_KEYS))}: {str(bad)[:120]}")
    image_ids = sorted(set(coco.imgs if image_ids is None else image_ids))
    unknown = sorted(({r["image_id"] for r in results} | set(image_ids)) - set(coco.imgs))
    if unknown:
        raise TinySamError(f"{len(unknown)} image ids of the results are not in the annotations (first: {unknown[:5]})")
    results = top_per_image(results, MAX_DETS)
    gts, dts = _federated_pairs(coco, results, _detection_areas(results), image_ids)
    cells = _evaluate_pairs(coco, gts, dts)
    cat_ids = sorted(coco.cats)
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), len(cat_ids), len(AREA_RANGES)))
    recall = -np.ones((len(IOU_THRESHOLDS), len(cat_ids), len(AREA_RANGES)))
    for k, cat_id in enumerate(cat_ids):
        for a in range(len(AREA_RANGES)):
            curve = _precision_recall(cells[cat_id, a]) if cells.get((cat_id, a)) else None
            if curve is not None:
                precision[:, :, k, a], recall[:, k, a] = curve
    groups = [[k for k, c in enumerate(cat_ids) if coco.cats[c]["frequency"] == f] for f in FREQUENCIES]
    values = [_mean_defined(precision[..., 0]), _mean_defined(precision[0, ..., 0]), _mean_defined(precision[5, ..., 0])]
    values += [_mean_defined(precision[..., a]) for a in (1, 2, 3)]
    values += [_mean_defined(precision[:, :, group, 0]) for group in groups]
    values += [_mean_defined(recall[..., a]) for a in range(len(AREA_RANGES))]
    stats = dict(zip(STAT_NAMES, values))
    return stats, "\n".join(_summary_line(name, value) for name, value in stats.items())


def prepare_lvis(images_dir: str | Path, annotations: str | Path, detections: str | Path, limit: int | None = None) -> Job:
    """The LVIS protocol's inputs: images by ``lvis_image_files``, the best 300 detections per image, federated AP."""
    coco = load_lvis(annotations)
    return prepare(
        coco, lvis_image_files(coco, images_dir), detections, lambda results, ids: evaluate_lvis(coco, results, ids), limit, MAX_DETS
    )


def run_lvis_eval(predictor: PredictorBase, images_dir: str | Path, annotations: str | Path, detections: str | Path, limit: int | None = None, progress: bool = True) -> dict:  # fmt: skip
    """The whole LVIS protocol: validate inputs, segment the best 300 detections per image, federated evaluation."""
    return run_job(predictor, prepare_lvis(images_dir, annotations, detections, limit), progress)
