"""Everything mode: the hierarchical generator against the official fixture, the grid generator against a
straight torch port of SAM's algorithm, edge cases, memory bounds and output formats."""

import gzip
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
mask_utils = pytest.importorskip("pycocotools.mask")

from conftest import SHARED, require
from tinysam_edge import HierarchicalMaskGenerator, MaskGenerator, Predictor, load_image
from tinysam_edge.amg import box_nms, build_point_grid
from tinysam_edge.mask_generator import UPSCALE_THREADS

EVERYTHING = SHARED / "fixtures" / "everything"
STAGE_KEYS = ("stage1_kept", "stage2_candidate_points", "stage2_covered_skipped", "stage2_prompts_decoded", "stage2_kept", "before_nms")


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _fixture_arguments(**override) -> dict:
    params = json.loads((require(EVERYTHING / "params.json")).read_text())["arguments"]
    names = ("points_per_side", "points_per_batch", "pred_iou_thresh", "high_score_thresh", "stability_score_thresh")
    names += ("stability_score_offset", "box_nms_thresh", "min_mask_region_area", "output_mode")
    return {k: params[k] for k in names} | override


def _match(got: list[dict], ref: list[dict]) -> None:
    """One-to-one: same prompt point, predicted IoU within 1e-3, mask IoU >= 0.99."""
    assert len(got) == len(ref)
    unused = list(range(len(ref)))
    for g in got:
        candidates = [
            i
            for i in unused
            if np.allclose(ref[i]["point_coords"], g["point_coords"], atol=1e-6)
            and abs(ref[i]["predicted_iou"] - g["predicted_iou"]) < 1e-3
        ]
        best = max(candidates, key=lambda i: _iou(_decode(ref[i]["segmentation"]), _decode(g["segmentation"])))
        assert _iou(_decode(ref[best]["segmentation"]), _decode(g["segmentation"])) >= 0.99
        assert abs(ref[best]["stability_score"] - g["stability_score"]) < 1e-3
        unused.remove(best)


@pytest.fixture(scope="module")
def parity_predictor(parity_model_dir):
    return Predictor(parity_model_dir)


def test_hierarchical_matches_the_official_generator(parity_predictor, parity_dir, monkeypatch):
    """With NMS off the output is the official pre-NMS set; NMS on it gives the official final list."""
    scored = []
    scores = parity_predictor.decode_batch_scores
    monkeypatch.setattr(parity_predictor, "decode_batch_scores", lambda *a, **k: scored.append(1) or scores(*a, **k))
    stages = json.loads((EVERYTHING / "stages.json").read_text())
    with gzip.open(EVERYTHING / "pre_nms.json.gz", "rt") as f:
        pre_nms = json.load(f)
    final = json.loads((EVERYTHING / "masks.json").read_text())
    generator = HierarchicalMaskGenerator(parity_predictor, **_fixture_arguments(box_nms_thresh=1.0))
    masks = generator.generate(load_image(parity_dir / "image.png"))
    stats = generator.stats
    got = {
        "stage1_kept": stats["stage1"]["kept"],
        "stage2_candidate_points": stats["stage2_candidates"],
        "stage2_covered_skipped": stats["stage2_covered"],
        "stage2_prompts_decoded": stats["stage2"]["prompts"],
        "stage2_kept": stats["stage2"]["kept"],
        "before_nms": stats["before_nms"],
    }
    assert got == {k: stages[k] for k in STAGE_KEYS}
    # most stage-1 prompts passed pred_iou_thresh, so only stage 1's first batch is decoded IoU first
    assert stats["stage1"]["prompts_passing"] > 0.4 * stats["stage1"]["prompts"] and len(scored) == 1
    assert stats["covered_flags"].tolist() == [c["covered"] for c in stages["stage2_candidates"]]
    _match(masks, pre_nms)

    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (m["bbox"] for m in masks)], np.float32)
    keep = box_nms(boxes, np.array([m["predicted_iou"] for m in masks]), 0.7)
    assert len(keep) == stages["after_nms"]
    _match([masks[i] for i in keep], final)


def _straight_grid_port(torch_predictor, image, points_per_side, pred_iou, stability, nms) -> list[tuple]:
    """SAM's grid algorithm in its literal order: upscale every mask with torch, then filter, then NMS."""
    import torch
    import torch.nn.functional as F

    from tinysam_edge.transforms import IMG_SIZE

    torch_predictor.set_image(image)
    h, w = image.shape[:2]
    ih, iw = torch_predictor.input_size
    kept = []
    for point in build_point_grid(points_per_side) * np.array([w, h]):
        _, scores, low = torch_predictor.predict(point[None], np.array([1]), multimask_output=True)
        logits = F.interpolate(torch.from_numpy(low)[None], (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)[..., :ih, :iw]
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)[0]
        for k in range(3):
            stab = ((logits[k] > 1).sum() / (logits[k] > -1).sum()).item()
            if scores[k] > pred_iou and stab >= stability:
                mask = (logits[k] > 0).numpy()
                ys, xs = np.nonzero(mask)
                kept.append((mask, float(scores[k]), [xs.min(), ys.min(), xs.max(), ys.max()], point))
    kept.sort(key=lambda r: -r[1])
    result = []
    for m in kept:  # plain greedy NMS
        if all(_box_iou(m[2], r[2]) <= nms for r in result):
            result.append(m)
    return result


def _box_iou(a, b) -> float:
    iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_grid_matches_a_straight_port(parity_predictor, parity_dir):
    pytest.importorskip("torch")
    from tinysam_edge.models import TorchPredictor, build_sam

    image = load_image(parity_dir / "image.png")
    args = _fixture_arguments(points_per_side=8, box_nms_thresh=1.0, output_mode="binary_mask")
    args.pop("high_score_thresh")
    masks = MaskGenerator(parity_predictor, **args).generate(image)
    reference = _straight_grid_port(
        TorchPredictor(build_sam(checkpoint=parity_dir / "weights.pt")),
        image,
        8,
        args["pred_iou_thresh"],
        args["stability_score_thresh"],
        1.0,
    )
    assert len(masks) == len(reference) > 5
    for m, r in zip(masks, reference):
        assert abs(m["predicted_iou"] - r[1]) < 1e-3 and _iou(m["segmentation"], r[0]) >= 0.99
        assert m["point_coords"] == [r[3].tolist()] and m["crop_box"] == [0, 0, 800, 534]


@pytest.fixture(scope="module")
def small_predictor(random_model_dir):
    return Predictor(random_model_dir)


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_second_stage_fully_covered_returns_stage_one(small_predictor):
    generator = HierarchicalMaskGenerator(
        small_predictor, points_per_side=16, pred_iou_thresh=0, stability_score_thresh=0, high_score_thresh=-1e9, box_nms_thresh=1.0
    )
    masks = generator.generate(_image(120, 160))
    assert generator.stats["stage2_covered"] == generator.stats["stage2_candidates"] > 0
    assert "stage2" not in generator.stats and len(masks) == generator.stats["stage1"]["kept"] == 48
    stage1_points = {tuple(p) for p in build_point_grid(4) * np.array([160, 120])}
    assert all(tuple(m["point_coords"][0]) in stage1_points for m in masks)


def test_empty_first_stage_decodes_every_candidate(small_predictor):
    generator = HierarchicalMaskGenerator(small_predictor, points_per_side=16, pred_iou_thresh=1e9)
    assert generator.generate(_image(64, 96)) == []
    stats = generator.stats
    assert stats["stage1"]["kept"] == 0 and stats["stage2_covered"] == 0
    assert stats["stage2"]["prompts"] == stats["stage2_candidates"] and 16 * 8 <= stats["stage2_candidates"] <= 16 * 15


@pytest.mark.parametrize("cls", [MaskGenerator, HierarchicalMaskGenerator])
def test_tiny_image(small_predictor, cls):
    generator = cls(small_predictor, points_per_side=16, pred_iou_thresh=0, stability_score_thresh=0)
    masks = generator.generate(_image(9, 17))
    assert masks and all(m["segmentation"].shape == (9, 17) for m in masks)
    assert all(0 <= m["bbox"][0] <= m["bbox"][0] + m["bbox"][2] < 17 for m in masks)


def test_large_image_memory_is_bounded(small_predictor, monkeypatch):
    """A 12-Mpx image: masks are upscaled one at a time per thread, so the peak is a few full-size buffers
    per upscale thread, not one per mask."""
    h, w = 3000, 4000
    calls = []
    upscale = small_predictor.upscale
    monkeypatch.setattr(small_predictor, "upscale", lambda low, out=None: calls.append(len(low)) or upscale(low, out))
    generator = MaskGenerator(
        small_predictor, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, output_mode="coco_rle"
    )
    small_predictor.set_image(_image(h, w))
    tracemalloc.start()
    masks = generator.generate()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls == [1] * 48 and len(masks) == 48
    per_thread = h * w * (4 + 2)  # float32 logits and two bool temporaries (a stability count, the mask)
    kept = 48 * h * w // 8  # the bit-packed masks
    assert peak < UPSCALE_THREADS * per_thread + kept + 2 * h * w, f"peak {peak / 2**20:.0f} MiB"  # 2 h w: decoder outputs, RLE


def test_output_modes_round_trip_through_pycocotools(small_predictor):
    image = _image(90, 130)
    outputs = {}
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        outputs[mode] = MaskGenerator(
            small_predictor, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, output_mode=mode
        ).generate(image)
    assert len({len(v) for v in outputs.values()}) == 1 and outputs["binary_mask"]
    for binary, raw, coco in zip(outputs["binary_mask"], outputs["uncompressed_rle"], outputs["coco_rle"]):
        mask = binary["segmentation"]
        from_raw = mask_utils.decode(mask_utils.frPyObjects(raw["segmentation"], *raw["segmentation"]["size"])).astype(bool)
        assert np.array_equal(from_raw, mask) and np.array_equal(_decode(coco["segmentation"]), mask)
        assert binary["area"] == int(mask.sum()) == int(mask_utils.area(coco["segmentation"]))
        x, y, bw, bh = binary["bbox"]
        ys, xs = np.nonzero(mask)
        assert [x, y, x + bw, y + bh] == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert set(binary) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


def test_small_region_removal(small_predictor):
    masks = MaskGenerator(
        small_predictor, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, min_mask_region_area=50
    ).generate(_image(90, 130))
    for m in masks:
        import cv2

        n, _, stats, _ = cv2.connectedComponentsWithStats(m["segmentation"].astype(np.uint8), connectivity=8)
        assert (stats[1:, cv2.CC_STAT_AREA] >= 50).all() or n == 2


def test_everything_cli(random_model_dir, tmp_path):
    image = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(image), _image(80, 100))
    out = tmp_path / "everything"
    cmd = [sys.executable, "-m", "tinysam_edge", "everything", str(image), "--model-dir", str(random_model_dir), "--out", str(out)]
    cmd += ["--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    records = json.loads((out / "masks.json").read_text())
    assert records and all(_decode(r["segmentation"]).shape == (80, 100) for r in records)
    assert cv2.imread(str(out / "overlay.png")).shape == (80, 100, 3)
    assert "stage1:" in result.stdout and "seconds:" in result.stdout


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_iou_first_and_whole_batches_keep_the_same_masks(parity_model_dir, parity_dir, monkeypatch, share):
    """Whichever way a batch is decoded (scores then survivors, or whole), the kept masks are the same."""
    predictor = Predictor(parity_model_dir)
    image = load_image(parity_dir / "image.png")[::4, ::4]
    options = {"points_per_side": 8, "points_per_batch": 16, "stability_score_thresh": 0, "box_nms_thresh": 1.0}
    reference = MaskGenerator(predictor, pred_iou_thresh=0, **options).generate(image)
    threshold = float(np.quantile([r["predicted_iou"] for r in reference], 0.75))  # a quarter of the masks survive
    expected = [r for r in reference if r["predicted_iou"] > threshold]
    monkeypatch.setattr("tinysam_edge.mask_generator.IOU_FIRST_MAX_SHARE", share)
    generator = MaskGenerator(predictor, pred_iou_thresh=threshold, **options)
    got = generator.generate(image)
    with_masks = generator.stats["grid"]["prompts_with_masks"]
    assert with_masks < 64 if share == 1.0 else with_masks > 48  # all IoU first, or whole batches after the first
    assert threshold > 0 and len(got) == len(expected) > 10
    for g, e in zip(sorted(got, key=lambda r: r["point_coords"]), sorted(expected, key=lambda r: r["point_coords"])):
        assert g["point_coords"] == e["point_coords"] and abs(g["predicted_iou"] - e["predicted_iou"]) < 1e-4
        assert _iou(g["segmentation"], e["segmentation"]) > 0.999
