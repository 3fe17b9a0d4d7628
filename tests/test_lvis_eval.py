"""LVIS federated evaluation: equal to the reference lvis-api 0.5.3, an oracle that scores 1.0, bad inputs, and the CLI."""

import copy
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

mask_utils = pytest.importorskip("pycocotools.mask")

from conftest import DATA, require
from tinysam_edge.errors import TinySamError
from tinysam_edge.masks import encode_rle
from tinysam_edge.quantize.evaluation.coco import top_per_image
from tinysam_edge.quantize.evaluation.lvis import STAT_NAMES, evaluate_lvis, load_lvis, lvis_image_files, run_lvis_eval

IMAGES = 64  # of coco_mini's 128, enough for every rule and quick to rasterise
CROWDED = 5  # index of the image that gets more than 300 detections
UNUSED_CATEGORY = 1000  # a category with no annotation anywhere (its AP is undefined)
# Rectangles (rows, columns) on a second image, in a category of their own: two overlapping ground-truth squares
# that a detection overlaps equally (the matcher's tie rule decides whether a second detection, equal to the
# first square, still finds a partner), and squares of area 32^2 and 96^2, found exactly (the area bounds).
TIE_GT = ((slice(100, 160), slice(100, 160)), (slice(100, 160), slice(110, 170)))
TIE_DETECTION = (slice(100, 160), slice(100, 170))
EDGE_SQUARES = ((slice(300, 332), slice(300, 332)), (slice(200, 296), slice(400, 496)))


def _rect(img: dict, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((img["height"], img["width"]), bool)
    mask[rows, cols] = True
    return mask


def _lvis_ground_truth(source: dict, rng: np.random.Generator) -> dict:
    """coco_mini as LVIS: r/c/f frequencies, negative and not-exhaustive lists, an area-0, an ignored, a duplicated annotation, rectangles."""
    images = source["images"][:IMAGES]
    kept = {img["id"] for img in images}
    anns = [dict(a) for a in source["annotations"] if a["image_id"] in kept]
    cats = [dict(c, frequency="rcf"[i % 3]) for i, c in enumerate(source["categories"])] + [{"id": UNUSED_CATEGORY, "frequency": "c"}]
    present = {}
    for ann in anns:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    lvis_images = []
    for img in images:
        positive = sorted(present.get(img["id"], ()))
        absent = [c["id"] for c in cats if c["id"] not in positive]
        negative = sorted(int(c) for c in rng.choice(absent, 6, replace=False))
        not_exhaustive = [int(rng.choice(positive))] if positive and rng.random() < 0.4 else []
        url = f"http://images.cocodataset.org/train2017/{img['file_name']}"
        lvis_images.append({"id": img["id"], "height": img["height"], "width": img["width"], "coco_url": url, "neg_category_ids": negative, "not_exhaustive_category_ids": not_exhaustive})  # fmt: skip
    anns[3]["area"] = 0
    anns[7]["ignore"] = 1
    anns.append(dict(anns[10], id=max(a["id"] for a in anns) + 1))
    rect_image = lvis_images[1]
    taken = present[rect_image["id"]] | set(rect_image["neg_category_ids"]) | {UNUSED_CATEGORY}
    rect_category = min(c["id"] for c in cats if c["id"] not in taken)
    for rows, cols in TIE_GT + EDGE_SQUARES:
        box = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
        mask = _rect(rect_image, rows, cols)
        anns.append({"id": max(a["id"] for a in anns) + 1, "image_id": rect_image["id"], "category_id": rect_category, "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": box})  # fmt: skip
    return {"images": lvis_images, "annotations": anns, "categories": cats}


def _detections(coco, rng: np.random.Generator) -> list[dict]:
    """1-3 shifted copies of every annotation (mostly right, some in negative or random categories), four rectangles, 350 boxes on one image.

    Scores have two decimals, so ties are common. Every result carries a ``_box`` for the box-area variant.
    """
    cat_ids = sorted(coco.cats)
    results = []
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann).astype(bool)
        for _ in range(int(rng.integers(1, 4))):
            draw = rng.random()
            cat = (
                ann["category_id"] if draw < 0.7 else int(rng.choice(img["neg_category_ids"])) if draw < 0.85 else int(rng.choice(cat_ids))
            )
            shifted = np.roll(mask, tuple(rng.integers(-6, 7, 2)), (0, 1))
            results.append(
                {"image_id": img["id"], "category_id": cat, "score": round(float(rng.random()), 2), "segmentation": encode_rle(shifted)}
            )
    first_rect = coco.dataset["annotations"][-len(TIE_GT + EDGE_SQUARES)]
    rect_image = coco.imgs[first_rect["image_id"]]
    for score, (rows, cols) in ((0.999, TIE_DETECTION), (0.998, TIE_GT[0]), (0.997, EDGE_SQUARES[0]), (0.996, EDGE_SQUARES[1])):
        results.append({"image_id": rect_image["id"], "category_id": first_rect["category_id"], "score": score, "segmentation": encode_rle(_rect(rect_image, rows, cols))})  # fmt: skip
    crowded = coco.imgs[sorted(coco.imgs)[CROWDED]]
    h, w = crowded["height"], crowded["width"]
    choices = sorted({a["category_id"] for a in coco.imgToAnns[crowded["id"]]}) + crowded["neg_category_ids"]
    for _ in range(350):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        mask = np.zeros((h, w), bool)
        mask[y0 : y0 + int(rng.integers(2, 200)), x0 : x0 + int(rng.integers(2, 200))] = True
        results.append({"image_id": crowded["id"], "category_id": int(rng.choice(choices)), "score": round(float(rng.random()), 2), "segmentation": encode_rle(mask)})  # fmt: skip
    for res in results:
        res["_box"] = mask_utils.toBbox({"size": res["segmentation"]["size"], "counts": res["segmentation"]["counts"].encode()}).tolist()
    return results


@pytest.fixture(scope="module")
def coco_mini() -> Path:
    return require(DATA / "coco_mini")


@pytest.fixture(scope="module")
def lvis_set(coco_mini, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The synthetic LVIS file and its detections."""
    rng = np.random.default_rng(0)
    gt = _lvis_ground_truth(json.loads((coco_mini / "annotations" / "instances_coco128seg.json").read_text()), rng)
    path = tmp_path_factory.mktemp("lvis") / "lvis_synthetic.json"
    path.write_text(json.dumps(gt))
    return path, _detections(load_lvis(path), rng)


@pytest.fixture(scope="session")
def lvis_reference(tmp_path_factory) -> Path:
    """lvis-api 0.5.3 installed without its dependencies (opencv-python would clash) into a throw-away folder."""
    target = tmp_path_factory.mktemp("lvis_reference")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "--target", str(target), "lvis==0.5.3"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not (target / "lvis" / "eval.py").is_file():
        pytest.skip(f"the reference lvis==0.5.3 could not be installed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return target / "lvis"


def _reference_stats(package: Path, annotations: Path, results: list[dict], image_ids: list[int] | None, monkeypatch) -> dict[str, float]:
    """The reference LVISEval's 13 numbers, imported without its package __init__ (which pulls in cv2 and matplotlib)."""
    monkeypatch.setattr(np, "float", float, raising=False)  # the reference's np.float, removed in NumPy 1.24
    stub = types.ModuleType("lvis")
    stub.__path__ = [str(package)]
    monkeypatch.setitem(sys.modules, "lvis", stub)
    try:
        lvis_eval, lvis_api = importlib.import_module("lvis.eval"), importlib.import_module("lvis.lvis")
        evaluator = lvis_eval.LVISEval(lvis_api.LVIS(str(annotations)), copy.deepcopy(results), "segm")
        if image_ids is not None:
            evaluator.params.img_ids = image_ids
        evaluator.run()
        return {key: float(value) for key, value in evaluator.get_results().items()}
    finally:
        for name in [n for n in sys.modules if n.startswith("lvis.")]:
            del sys.modules[name]


def test_equal_to_the_reference_evaluator(lvis_set, lvis_reference, monkeypatch):
    path, detections = lvis_set
    coco = load_lvis(path)
    with_masks = [{k: v for k, v in d.items() if k != "_box"} for d in detections]
    with_boxes = [dict(r, bbox=d["_box"]) for r, d in zip(with_masks, detections)]
    subset = sorted(coco.imgs)[: IMAGES // 2]
    for results, image_ids in ((with_masks, None), (with_boxes, None), (with_masks, subset)):
        expected = _reference_stats(lvis_reference, path, results, image_ids, monkeypatch)
        ours, summary = evaluate_lvis(coco, results, image_ids)
        assert list(expected) == list(ours) == list(STAT_NAMES)
        for key in STAT_NAMES:
            assert ours[key] == pytest.approx(expected[key], abs=1e-9), key
        assert 0.05 < ours["AP"] < 0.95 and len(summary.splitlines()) == 13
    mask_areas, box_areas = evaluate_lvis(coco, with_masks)[0], evaluate_lvis(coco, with_boxes)[0]
    assert mask_areas["APs"] != box_areas["APs"]  # the box-area rule is live on this set


def test_oracle_ground_truth_masks_score_one(lvis_set):
    path, _ = lvis_set
    coco = load_lvis(path)
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 1.0,
            "segmentation": encode_rle(coco.annToMask(a).astype(bool)),
        }
        for a in coco.dataset["annotations"]
        if a["area"] > 0
    ]
    stats, _ = evaluate_lvis(coco, results)
    for key in STAT_NAMES:
        assert stats[key] == -1.0 or stats[key] == pytest.approx(1.0), key
    assert all(stats[key] == pytest.approx(1.0) for key in ("AP", "AP50", "APr", "APc", "APf", "AR@300"))
    annotated = {a["category_id"] for a in coco.dataset["annotations"]}
    image = next(img for img in coco.imgs.values() if set(img["neg_category_ids"]) & annotated)
    stray = [dict(results[0], image_id=image["id"], category_id=min(set(image["neg_category_ids"]) & annotated), score=2.0)]
    assert evaluate_lvis(coco, stray + results)[0]["AP"] < 1.0  # a negative-list category counts as a false positive


def test_top_per_image_is_stable():
    dets = [{"image_id": i % 2, "score": s} for i, s in enumerate([0.5, 0.9, 0.5, 0.1, 0.7, 0.1, 0.5])]
    kept = top_per_image(dets, 2)
    assert kept == [dets[0], dets[1], dets[3], dets[4]]  # image 0: 0.7 and the first 0.5; image 1: 0.9 and the first 0.1


def test_image_files_flat_or_in_split_folders(lvis_set, tmp_path):
    coco = load_lvis(lvis_set[0])
    first, second = sorted(coco.imgs)[:2]
    name = coco.imgs[second]["coco_url"].split("/")[-1]
    (tmp_path / "train2017").mkdir()
    (tmp_path / "train2017" / name).write_bytes(b"")
    files = lvis_image_files(coco, tmp_path)
    assert files[second] == tmp_path / "train2017" / name and files[first].parent == tmp_path


def test_bad_inputs(lvis_set, coco_mini, tmp_path):
    path, detections = lvis_set
    coco = load_lvis(path)
    with pytest.raises(TinySamError, match="lacks neg_category_ids"):
        load_lvis(coco_mini / "annotations" / "instances_coco8seg.json")
    data = json.loads(path.read_text())
    data["categories"][0]["frequency"] = "x"
    (tmp_path / "freq.json").write_text(json.dumps(data))
    with pytest.raises(TinySamError, match="frequency r, c or f"):
        load_lvis(tmp_path / "freq.json")
    results = [{k: v for k, v in d.items() if k != "_box"} for d in detections[:5]]
    with pytest.raises(TinySamError, match="not in the annotations"):
        evaluate_lvis(coco, [dict(results[0], image_id=123456)])
    with pytest.raises(TinySamError, match="not in the annotations"):
        evaluate_lvis(coco, results, [min(coco.imgs), 123456])
    with pytest.raises(TinySamError, match="a result lacks"):
        evaluate_lvis(coco, [{k: v for k, v in results[0].items() if k != "score"}])
    with pytest.raises(TinySamError, match="every result carries a bbox"):
        evaluate_lvis(coco, [dict(results[0], bbox=[0, 0, 5, 5])] + results[1:])
    box = {"image_id": min(coco.imgs), "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.5}
    for dets, message in (([dict(box, image_id=123456)], "not in the annotations"), ([dict(box, category_id=4242)], "no detection refers")):
        (tmp_path / "dets.json").write_text(json.dumps(dets))
        with pytest.raises(TinySamError, match=message):  # raised before any model runs
            run_lvis_eval(None, coco_mini / "images", path, tmp_path / "dets.json", progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinysam_edge", "eval", *args], check=False, capture_output=True, text=True, timeout=600)


def test_cli_eval_lvis_and_compare(lvis_set, coco_mini, parity_model_dir, tmp_path):
    path, _ = lvis_set
    coco = load_lvis(path)
    boxes = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in coco.dataset["annotations"]
    ]
    (tmp_path / "dets.json").write_text(json.dumps(boxes))
    (tmp_path / "bad.json").write_text("[{not json")
    model = str(parity_model_dir)
    inputs = ["--images", str(coco_mini / "images"), "--annotations", str(path), "--detections", str(tmp_path / "dets.json")]
    result = _cli("lvis", *inputs, "--limit", "2", "--model-dir", model, "--out", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["dataset"] == "lvis" and summary["images"] == 2 and list(summary["stats"]) == list(STAT_NAMES)
    assert len(json.loads((tmp_path / "r.json").read_text())) == summary["detections"] > 0 and "APr" in result.stdout
    result = _cli(
        "compare",
        "--dataset",
        "lvis",
        *inputs,
        "--limit",
        "1",
        "--reference",
        model,
        "--candidate",
        model,
        "--out",
        str(tmp_path / "c.json"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["dataset"] == "lvis" and report["reference"]["stats"] == report["candidate"]["stats"]  # same model, same numbers
    result = _cli("lvis", *inputs[:-1], str(tmp_path / "bad.json"), "--model-dir", model, "--out", str(tmp_path / "b.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "is not valid JSON" in result.stderr
