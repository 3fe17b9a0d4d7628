"""COCO zero-shot evaluation: the RLE writer, an oracle that must score AP 1.0, the real pipeline, and bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

mask_utils = pytest.importorskip("pycocotools.mask")

from conftest import DATA, require
from tinysam_edge.coco import load_ground_truth
from tinysam_edge.errors import TinySamError
from tinysam_edge.masks import encode_rle
from tinysam_edge.quantize.evaluation.coco import check_detections, evaluate_segm, run_coco_eval

COCO8 = "instances_coco8seg.json"
DETS8 = "gt_derived_jittered_bbox_results_coco8seg.json"


@pytest.fixture(scope="module")
def coco_mini():
    return require(DATA / "coco_mini")


@pytest.mark.parametrize(
    "shape, fill", [((1, 1), True), ((1, 1), False), ((7, 1), "one"), ((1, 9), "one"), ((5, 4), False), ((5, 4), True), ((300, 200), "one")]
)
def test_rle_writer_round_trips_odd_shapes(shape, fill):
    mask = np.zeros(shape, bool) if fill in (False, "one") else np.ones(shape, bool)
    if fill == "one":
        mask[shape[0] // 2, shape[1] // 2] = True
    rle = encode_rle(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    json.dumps(rle)
    assert np.array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(mask.sum())


def test_oracle_ground_truth_masks_score_ap_one(coco_mini):
    coco = load_ground_truth(coco_mini / "annotations" / "instances_coco128seg.json")
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 1.0,
            "segmentation": encode_rle(coco.annToMask(a).astype(bool)),
        }
        for a in coco.dataset["annotations"]
        if not a.get("iscrowd", 0)
    ]
    stats, summary = evaluate_segm(coco, results, coco.getImgIds())
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert len(summary.splitlines()) == 12
    shuffled = [dict(r, category_id=r["category_id"]) for r in results[::-1]]
    assert evaluate_segm(coco, shuffled, coco.getImgIds())[0]["AP"] == pytest.approx(1.0)  # order does not matter


def test_pipeline_on_the_8_image_subset(coco_mini, parity_model_dir):
    from tinysam_edge import Predictor

    report = run_coco_eval(
        Predictor(parity_model_dir),
        coco_mini / "images",
        coco_mini / "annotations" / COCO8,
        coco_mini / "detections" / DETS8,
        progress=False,
    )
    assert report["images"] == 8 and report["detections"] == 30 and len(report["results"]) == 30
    assert set(report["stats"]) >= {"AP", "AP50", "AR100"} and all(-1.0 <= v <= 1.0 for v in report["stats"].values())
    assert len(report["summary"].splitlines()) == 12 and report["warnings"]["unknown_category"] == 0


def test_fp32_vs_int8_compare_cli(coco_mini, parity_model_dir, int8_dir, tmp_path):
    out = tmp_path / "cmp.json"
    cmd = [sys.executable, "-m", "tinysam_edge", "eval", "compare", "--reference", str(parity_model_dir), "--candidate", str(int8_dir)]
    cmd += [
        "--images",
        str(coco_mini / "images"),
        "--annotations",
        str(coco_mini / "annotations" / COCO8),
        "--detections",
        str(coco_mini / "detections" / DETS8),
    ]
    cmd += ["--limit", "3", "--out", str(out)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["dataset"] == "coco" and report["reference"]["images"] == report["candidate"]["images"] == 3
    assert "| AP |" in result.stdout and report["candidate"]["seconds_per_image"] > 0


def test_bad_inputs(coco_mini, parity_model_dir, tmp_path):
    coco = load_ground_truth(coco_mini / "annotations" / COCO8)
    files = {i: coco_mini / "images" / img["file_name"] for i, img in coco.imgs.items()}
    cats = set(coco.getCatIds())
    images = coco_mini / "images"
    good = {"image_id": 9, "category_id": 51, "bbox": [1, 2, 30, 40], "score": 0.5}
    with pytest.raises(TinySamError, match="no detections"):
        check_detections([], files, cats)
    with pytest.raises(TinySamError, match="not in the annotations"):
        check_detections([good | {"image_id": 123456}], files, cats)
    with pytest.raises(TinySamError, match="detection 1 is not a COCO result"):
        check_detections([good, {"image_id": 9}], files, cats)
    usable, warnings = check_detections([good, good | {"category_id": 999}], files, cats)
    assert len(usable) == 1 and warnings["unknown_category"] == 1
    with pytest.raises(TinySamError, match="images are missing"):
        check_detections([good], {i: tmp_path / p.name for i, p in files.items()}, cats)
    (tmp_path / "bad.json").write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "tinysam_edge", "eval", "coco", "--images", str(images), "--annotations", str(coco_mini / "annotations" / COCO8),
         "--detections", str(tmp_path / "bad.json"), "--model-dir", str(parity_model_dir), "--out", str(tmp_path / "r.json")],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "is not valid JSON" in result.stderr


def _without(key: str):
    return lambda entry: entry.pop(key)


@pytest.mark.parametrize(
    "section, change, fragment",
    [
        ("images", _without("file_name"), "lacks 'file_name'"),
        ("images", _without("width"), "lacks 'width'"),
        ("images", _without("height"), "lacks 'height'"),
        ("annotations", _without("segmentation"), "lacks 'segmentation'"),
        ("annotations", _without("iscrowd"), "lacks 'iscrowd'"),
        ("annotations", _without("area"), "lacks 'area'"),
        ("annotations", lambda a: a.update(segmentation=[]), "'segmentation' is empty"),
    ],
)
def test_annotation_files_missing_a_key_are_one_line(coco_mini, tmp_path, capsys, section, change, fragment):
    from tinysam_edge.cli import main

    data = json.loads((coco_mini / "annotations" / COCO8).read_text())
    change(data[section][2])
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps(data))
    args = ["eval", "coco", "--images", str(coco_mini / "images"), "--annotations", str(annotations)]
    args += [
        "--detections",
        str(coco_mini / "detections" / DETS8),
        "--model-dir",
        str(tmp_path / "no-model"),
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert main(args) == 2  # before any model loads
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{section}[2] (id {data[section][2]['id']})" in err and fragment in err, err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("score", [float("nan"), float("inf"), "0.5", True])
def test_non_finite_or_non_numeric_scores_are_refused(coco_mini, score):
    files = {9: coco_mini / "images" / "000000000009.jpg"}
    with pytest.raises(TinySamError, match="detection 1 has a non-finite or non-numeric score"):
        check_detections([{"image_id": 9, "category_id": 51, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id": 9, "category_id": 51, "bbox": [1, 2, 3, 4], "score": score}], files, {51})  # fmt: skip


class _BlankPredictor:
    """Stands in for a predictor: empty masks at the image's real size."""

    def set_image(self, image):
        self.original_size = image.shape[:2]

    def decode_batch(self, boxes, multimask_output):
        return np.zeros((len(boxes), 1, 256, 256), np.float32), np.zeros((len(boxes), 1), np.float32)

    def upscale(self, low_res):
        return np.zeros((len(low_res), *self.original_size), np.float32)


def test_image_sizes_that_differ_from_the_annotations_warn_once(coco_mini, capsys):
    from tinysam_edge.quantize.evaluation.coco import segment_detections

    coco = load_ground_truth(coco_mini / "annotations" / COCO8)
    ids = sorted(coco.imgs)[:3]
    files = {i: coco_mini / "images" / coco.imgs[i]["file_name"] for i in ids}
    sizes = {i: (coco.imgs[i]["height"], coco.imgs[i]["width"]) for i in ids}
    dets = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5} for i in ids]
    _, warnings = segment_detections(_BlankPredictor(), files, dets, progress=False, sizes=sizes)
    assert warnings["size_mismatch"] == 0 and "warning" not in capsys.readouterr().err
    sizes = {i: (h // 2, w) for i, (h, w) in sizes.items()}  # the annotations claim other sizes
    results, warnings = segment_detections(_BlankPredictor(), files, dets, progress=False, sizes=sizes)
    err = capsys.readouterr().err
    assert warnings["size_mismatch"] == 3 and err.count("warning:") == 1 and f"image {ids[0]}" in err and len(results) == 3
