"""Automatic ("everything") mask generation: SAM's point-grid generator and TinySAM's hierarchical one.

Both follow the reference algorithms without crops: decode a point grid in batches (3 masks per
point), keep masks whose predicted IoU and stability pass, box-NMS the rest. The work is ordered
for a CPU without changing the result: the IoU filter runs on the 256x256 outputs, only its
survivors are upscaled (one at a time per thread, into a reused buffer), and full-resolution masks
are kept bit-packed.
"""

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from .amg import box_nms, build_point_grid, remove_small_regions, stability_score
from .everything_settings import EverythingSettings
from .image import to_rgb_uint8
from .masks import MASK_THRESHOLD, box_xywh, encode_rle, mask_to_box, mask_to_uncompressed_rle
from .predictor import PredictorBase

#: Threads that upscale and filter masks, each with one full-resolution float32 buffer. The work is
#: per-pixel numpy and OpenCV that releases the GIL; one mask at a time into a reused buffer is about
#: twice as fast as whole chunks (fresh pages) even on one thread (docs/benchmarks.md).
UPSCALE_THREADS = min(4, os.cpu_count() or 1)
#: IoU-first decoding (scores, then masks of the survivors) costs the IoU-only graph (about 60% of a
#: prompt) plus a full decode per survivor, so it beats one full decode of the batch while under about
#: 40% of the prompts survive (measured on 2 cores, f32 and bf16, docs/benchmarks.md).
IOU_FIRST_MAX_SHARE = 0.4


@dataclass
class MaskRecords:
    """Kept masks (bit-packed at full resolution) with their boxes, scores and prompts."""

    shape: tuple[int, int]
    packed: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    stability: list[float] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.packed)

    def add(self, mask: np.ndarray, iou: float, stability: float, point: np.ndarray) -> None:
        self.add_packed(np.packbits(mask, axis=None), mask_to_box(mask), iou, stability, point)

    def add_packed(self, packed: np.ndarray, box: np.ndarray, iou: float, stability: float, point: np.ndarray) -> None:
        self.packed.append(packed)
        self.boxes.append(box)
        self.iou.append(float(iou))
        self.stability.append(float(stability))
        self.points.append(point)

    def mask(self, i: int) -> np.ndarray:
        h, w = self.shape
        return np.unpackbits(self.packed[i], count=h * w).reshape(h, w).astype(bool)

    def extend(self, other: "MaskRecords") -> None:
        for name in ("packed", "boxes", "iou", "stability", "points"):
            getattr(self, name).extend(getattr(other, name))

    def select(self, keep: np.ndarray) -> "MaskRecords":
        out = MaskRecords(self.shape)
        for name in ("packed", "boxes", "iou", "stability", "points"):
            values = getattr(self, name)
            setattr(out, name, [values[i] for i in keep])
        return out


class MaskGenerator:
    """SAM's automatic mask generator (``SamAutomaticMaskGenerator`` without crops) on any predictor.

    ``MaskGenerator(predictor, settings)`` or ``MaskGenerator(predictor, points_per_side=16, ...)``:
    keyword options replace fields of ``settings`` (default ``EverythingSettings(mode="grid")``).
    ``generate(image)`` returns SAM's list of dicts: ``segmentation`` (per ``output_mode``), ``area``,
    ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``, in NMS
    order (best predicted IoU first). ``stats`` holds counts and seconds of the last call.
    """

    mode = "grid"

    def __init__(
        self, predictor: PredictorBase, settings: EverythingSettings | None = None, progress: bool = False, **options: object
    ) -> None:
        if self.mode == "grid" and "high_score_thresh" in options:
            raise TypeError("high_score_thresh is the hierarchical coverage threshold; MaskGenerator (grid) has none")
        settings = replace(settings or EverythingSettings(mode=self.mode), **options)
        if settings.mode != self.mode:
            raise ValueError(f"{type(self).__name__} runs mode {self.mode!r}, the settings say {settings.mode!r}; use make_generator")
        self.predictor = predictor
        self.settings = settings
        self.progress = progress
        self.stats: dict = {}

    def generate(self, image: np.ndarray | None = None) -> list[dict]:
        """All masks of an HxWx3 uint8 RGB image; ``image=None``: of the image already set on the predictor."""
        h, w = self._set_image(image)
        points = build_point_grid(self.settings.points_per_side) * np.array([w, h])
        records, _ = self._decode_points(points, "grid")
        return self._finish(records)

    def _set_image(self, image: np.ndarray | None) -> tuple[int, int]:
        """Run the encoder on ``image`` (None: keep the predictor's current image); its (H, W)."""
        self.stats = {"seconds": {"encoder": 0.0, "decoder": 0.0, "upscale_and_filter": 0.0, "nms_and_output": 0.0}}
        if image is None:
            if not self.predictor.is_image_set:
                raise ValueError("generate() without an image runs on the predictor's current image: call predictor.set_image first")
            return self.predictor.original_size
        start = time.perf_counter()
        self.predictor.set_image(to_rgb_uint8(image))
        self.stats["seconds"]["encoder"] = time.perf_counter() - start
        return self.predictor.original_size

    def _batches(self, points: np.ndarray, desc: str) -> Iterator[np.ndarray]:
        starts = range(0, len(points), self.settings.points_per_batch)
        for start in tqdm(starts, desc=f"{desc} batches", unit="batch", disable=not self.progress):
            yield points[start : start + self.settings.points_per_batch]

    def _decode_points(
        self, points: np.ndarray, stage: str, high_score_thresh: float | None = None
    ) -> tuple[MaskRecords, np.ndarray | None]:
        """Decode single-point prompts and keep the masks that pass the filters.

        IoU first, while it pays: a batch's scores come without masks and only prompts with a token
        above ``pred_iou_thresh`` are decoded for their logits. Once more than ``IOU_FIRST_MAX_SHARE``
        of the prompts so far on this image (earlier stages included) had such a token, batches are
        decoded whole (same result, less work).
        With ``high_score_thresh``, also return the OR of (logits > it) over the kept masks.
        """
        h, w = self.predictor.original_size
        records = MaskRecords((h, w))
        coverage = np.zeros((h, w), bool) if high_score_thresh is not None else None
        counts = {
            "prompts": len(points),
            "masks_decoded": 0,
            "prompts_passing": 0,
            "prompts_with_masks": 0,
            "passed_pred_iou": 0,
            "masks_upscaled": 0,
        }
        seconds = self.stats["seconds"]
        earlier = [c for c in self.stats.values() if isinstance(c, dict) and "prompts_passing" in c]  # stages before this one
        seen_before, passing_before = sum(c["masks_decoded"] // 3 for c in earlier), sum(c["prompts_passing"] for c in earlier)
        with ThreadPoolExecutor(UPSCALE_THREADS, thread_name_prefix="tinysam-upscale") as pool:
            for batch in self._batches(points, stage):
                start = time.perf_counter()
                seen, passing = seen_before + counts["masks_decoded"] // 3, passing_before + counts["prompts_passing"]
                iou_first = self.settings.pred_iou_thresh > 0 and (seen == 0 or passing <= IOU_FIRST_MAX_SHARE * seen)
                iou, low_res, batch_points = self._decode_batch(batch, iou_first)
                seconds["decoder"] += time.perf_counter() - start
                start = time.perf_counter()
                counts["masks_decoded"] += 3 * len(batch)
                counts["prompts_passing"] += len(batch_points)
                counts["prompts_with_masks"] += len(batch_points) if iou_first else len(batch)
                iou = iou.reshape(-1)
                keep = np.flatnonzero(iou > self.settings.pred_iou_thresh) if self.settings.pred_iou_thresh > 0 else np.arange(len(iou))
                counts["passed_pred_iou"] += len(keep)
                counts["masks_upscaled"] += len(keep)
                self._filter_upscaled(records, coverage, high_score_thresh, low_res, iou, keep, np.repeat(batch_points, 3, axis=0), pool)
                seconds["upscale_and_filter"] += time.perf_counter() - start
        counts["kept"] = len(records)
        self.stats[stage] = counts
        return records, coverage

    def _decode_batch(self, batch: np.ndarray, iou_first: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores (P, 3), low-res logits (P, 3, 256, 256) and points (P, 2) of the prompts that may keep a mask.

        With ``iou_first`` those are the prompts with a token above ``pred_iou_thresh``, and only
        they are decoded for logits; otherwise the whole batch is decoded at once.
        """
        coords, labels = batch[:, None, :], np.ones((len(batch), 1))
        if not iou_first:
            low_res, iou = self.predictor.decode_batch(coords, labels, multimask_output=True)
            passing = (
                np.flatnonzero((iou > self.settings.pred_iou_thresh).any(axis=1))
                if self.settings.pred_iou_thresh > 0
                else np.arange(len(batch))
            )
            return iou[passing], low_res[passing], batch[passing]
        scores = self.predictor.decode_batch_scores(coords, labels, multimask_output=True)
        passing = np.flatnonzero((scores > self.settings.pred_iou_thresh).any(axis=1))
        low_res, _ = self.predictor.decode_batch_masks(passing, multimask_output=True)
        return scores[passing], low_res, batch[passing]

    def _filter_upscaled(self, records, coverage, high_score_thresh, low_res, iou, keep, points, pool) -> None:
        """Upscale the IoU-passing masks (``keep`` indexes prompt-major tokens of ``low_res`` (P, 3, 256, 256))
        in contiguous parts on ``pool``'s threads and add those that pass stability, in ``keep``'s order."""
        tokens = low_res.shape[1]
        parts = np.array_split(keep, min(len(keep), UPSCALE_THREADS)) if len(keep) else []
        for part, (kept, cover) in zip(
            parts, pool.map(lambda p: self._upscale_part(low_res[p // tokens, p % tokens], high_score_thresh), parts)
        ):
            for j, stability, packed, box in kept:
                records.add_packed(packed, box, iou[part[j]], stability, points[part[j]])
            if coverage is not None:
                coverage |= cover

    def _upscale_part(self, low_res: np.ndarray, high_score_thresh: float | None) -> tuple[list, np.ndarray | None]:
        """(n, 256, 256) logits upscaled one by one into one buffer: (index, stability, packed mask, box) of those
        passing stability, and the OR of (logits > ``high_score_thresh``) over them (None without it)."""
        h, w = self.predictor.original_size
        logits = np.empty((1, h, w), np.float32)
        cover = np.zeros((h, w), bool) if high_score_thresh is not None else None
        kept = []
        for j in range(len(low_res)):
            self.predictor.upscale(low_res[j : j + 1], out=logits)
            stability = stability_score(logits, self.settings.stability_score_offset)[0]
            if self.settings.stability_score_thresh > 0 and stability < self.settings.stability_score_thresh:
                continue
            if cover is not None:
                cover |= logits[0] > high_score_thresh
            mask = logits[0] > MASK_THRESHOLD
            kept.append((j, stability, np.packbits(mask, axis=None), mask_to_box(mask)))
        return kept, cover

    def _finish(self, records: MaskRecords) -> list[dict]:
        start = time.perf_counter()
        self.stats["before_nms"] = len(records)
        if len(records):
            records = records.select(box_nms(np.stack(records.boxes), np.array(records.iou), self.settings.box_nms_thresh))
        if self.settings.min_mask_region_area > 0 and len(records):
            records = self._remove_small_regions(records)
        self.stats["after_nms"] = len(records)
        out = [self._record(records, i) for i in range(len(records))]
        self.stats["seconds"]["nms_and_output"] = time.perf_counter() - start
        return out

    def _remove_small_regions(self, records: MaskRecords) -> MaskRecords:
        """SAM's clean-up: fill small holes, drop small islands, then prefer untouched masks in a second NMS."""
        cleaned, scores = MaskRecords(records.shape), []
        for i in range(len(records)):
            mask, holes = remove_small_regions(records.mask(i), self.settings.min_mask_region_area, "holes")
            mask, islands = remove_small_regions(mask, self.settings.min_mask_region_area, "islands")
            cleaned.add(mask, records.iou[i], records.stability[i], records.points[i])
            scores.append(0.0 if holes or islands else 1.0)
        return cleaned.select(box_nms(np.stack(cleaned.boxes), np.array(scores), self.settings.box_nms_thresh))

    def _record(self, records: MaskRecords, i: int) -> dict:
        mask = records.mask(i)
        h, w = records.shape
        if self.settings.output_mode == "binary_mask":
            segmentation = mask
        elif self.settings.output_mode == "uncompressed_rle":
            segmentation = mask_to_uncompressed_rle(mask)
        else:
            segmentation = encode_rle(mask)
        return {
            "segmentation": segmentation,
            "area": int(mask.sum()),
            "bbox": box_xywh(records.boxes[i]),
            "predicted_iou": records.iou[i],
            "point_coords": [records.points[i].tolist()],
            "stability_score": records.stability[i],
            "crop_box": [0, 0, w, h],
        }


class HierarchicalMaskGenerator(MaskGenerator):
    """TinySAM's hierarchical everything mode: a sparse grid first, then only the points it left uncovered.

    Stage 1 decodes a (points_per_side / 4)^2 grid; the kept masks' high-confidence pixels
    (logit > ``high_score_thresh``) cover the image. Stage 2 visits the full-density lattice around
    each stage-1 point (spacing W // points_per_side) and decodes only uncovered points; one NMS
    runs over both stages. Where stage 1 covers every stage-2 point (the official code raises
    there), the stage-1 masks are returned.
    """

    mode = "hierarchical"

    def generate(self, image: np.ndarray | None = None) -> list[dict]:
        """All masks of an HxWx3 uint8 RGB image, hierarchically; ``image=None``: of the predictor's current image."""
        h, w = self._set_image(image)
        stage1_points = build_point_grid(self.settings.points_per_side // 4) * np.array([w, h])
        stage1, coverage = self._decode_points(stage1_points, "stage1", self.settings.high_score_thresh)
        candidates = self.stage2_candidates(stage1_points, w, h)
        covered = coverage[candidates[:, 1].astype(int), candidates[:, 0].astype(int)]
        self.stats["stage2_candidates"] = len(candidates)
        self.stats["stage2_covered"] = int(covered.sum())
        self.stats["covered_flags"] = covered
        # The official code passes the points through [0, 1] (x / W, then * W); so does this.
        stage2_points = candidates[~covered] / np.array([w, h]) * np.array([w, h])
        records = MaskRecords((h, w))
        if len(stage2_points):
            records, _ = self._decode_points(stage2_points, "stage2")
        records.extend(stage1)  # stage 2 first, then stage 1: the official pre-NMS order
        return self._finish(records)

    def stage2_candidates(self, stage1_points: np.ndarray, w: int, h: int) -> np.ndarray:
        """The lattice points around each stage-1 point, in the official visiting order.

        Offsets (dx, dy) in {-1, 0, 1}^2 minus (0, 0) column by column, then dx = 2 (if inside),
        then dy = 2 (if inside), then (2, 2), in steps of W // points_per_side and H // points_per_side.
        """
        ws, hs = w // self.settings.points_per_side, h // self.settings.points_per_side
        out = []
        for x, y in stage1_points:
            offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
            right, below = x + 2 * ws < w, y + 2 * hs < h
            offsets += [(2, dy) for dy in (-1, 0, 1)] if right else []
            offsets += [(dx, 2) for dx in (-1, 0, 1)] if below else []
            offsets += [(2, 2)] if right and below else []
            out.extend((x + dx * ws, y + dy * hs) for dx, dy in offsets)
        return np.array(out, dtype=np.float64).reshape(-1, 2)


def make_generator(predictor: PredictorBase, settings: EverythingSettings | None = None, progress: bool = False) -> MaskGenerator:
    """The generator ``settings.mode`` names (default: ``EverythingSettings()``, hierarchical) on ``predictor``."""
    settings = settings or EverythingSettings()
    generator = HierarchicalMaskGenerator if settings.mode == "hierarchical" else MaskGenerator
    return generator(predictor, settings, progress=progress)
