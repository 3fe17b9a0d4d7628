"""``tinysam-edge label``: output format, COCO round trip, bad images, a killed and resumed job, and the Ray engine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

mask_utils = pytest.importorskip("pycocotools.mask")

from conftest import DATA, require
from tinysam_edge.cli import main
from tinysam_edge.coco import load_ground_truth
from tinysam_edge.errors import TinySamError
from tinysam_edge.label.annotate import annotation
from tinysam_edge.label.inputs import read_images
from tinysam_edge.label.shards import ShardWriter, complete_shards, merge
from tinysam_edge.quantize.evaluation.coco import evaluate_segm

COCO8 = "instances_coco8seg.json"
DETS8 = "gt_derived_jittered_bbox_results_coco8seg.json"
#: Four coco8 images with 7 detections between them: enough for 2+ shards, cheap to label.
SUBSET = (25, 30, 34, 36)


@pytest.fixture(scope="module")
def coco_mini() -> Path:
    return require(DATA / "coco_mini")


@pytest.fixture(scope="module")
def subset(coco_mini, tmp_path_factory) -> dict:
    """A COCO images JSON of SUBSET (file names relative to coco_mini/images) and the shared GT-derived detections."""
    data = json.loads((coco_mini / "annotations" / COCO8).read_text())
    folder = tmp_path_factory.mktemp("subset")
    images = folder / "images.json"
    images.write_text(json.dumps({"images": [i for i in data["images"] if i["id"] in SUBSET], "categories": data["categories"]}))
    detections = [d for d in json.loads((coco_mini / "detections" / DETS8).read_text()) if d["image_id"] in SUBSET]
    return {"images": images, "root": coco_mini / "images", "boxes": coco_mini / "detections" / DETS8, "detections": detections}


def label_args(subset: dict, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "label",
        str(subset["images"]),
        "--image-root",
        str(subset["root"]),
        "--boxes",
        str(subset["boxes"]),
        "--model-dir",
        str(model_dir),
        "--out",
        str(out),
        *extra,
    ]


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((out / "shards").glob("shard-*.jsonl")) for line in path.read_text().splitlines()]


def rle(segmentation: dict) -> dict:
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode()}


@pytest.fixture(scope="module")
def label_home(tmp_path_factory) -> Path:
    """One weights cache for this module, so the model compiles once and later predictors load the cached blob."""
    return tmp_path_factory.mktemp("label-home")


@pytest.fixture(autouse=True)
def _shared_compile_cache(label_home, monkeypatch):
    monkeypatch.setenv("TINYSAM_EDGE_HOME", str(label_home))


@pytest.fixture(scope="module")
def local_job(subset, parity_model_dir, label_home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "job"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYSAM_EDGE_HOME", str(label_home))
        assert main(label_args(subset, out, parity_model_dir, "--shard-size", "3")) == 0
    return out


def test_local_output_format(local_job, subset, capsys):
    shards = sorted(p.name for p in (local_job / "shards").iterdir())
    # 4 images in shards of 3, each with its checksum (sha256sum format); no temporary file left
    assert shards == ["shard-00000.jsonl", "shard-00000.sha256", "shard-00001.jsonl", "shard-00001.sha256"]
    assert (local_job / "shards" / "shard-00001.sha256").read_text().endswith("  shard-00001.jsonl\n")
    lines = lines_of(local_job)
    assert [line["image_id"] for line in lines] == list(SUBSET) and [line["index"] for line in lines] == [0, 1, 2, 3]
    by_image = {line["image_id"]: line for line in lines}
    for det in subset["detections"]:  # one annotation per detection, in the detections' order, with its category and score
        ann = by_image[det["image_id"]]["annotations"].pop(0)
        assert (ann["category_id"], ann["score"]) == (det["category_id"], det["score"])
        assert all(abs(p - d) <= 1 for p, d in zip(ann["prompt"]["box"][:2], det["bbox"][:2]))
        assert ann["bbox"] == [int(v) for v in mask_utils.toBbox(rle(ann["segmentation"]))]  # COCO's bbox convention
        assert ann["area"] == int(mask_utils.area(rle(ann["segmentation"]))) and 0.0 <= ann["stability_score"] <= 1.0
        assert np.isfinite(ann["predicted_iou"])
    assert all(not line["annotations"] for line in by_image.values())
    merged = json.loads((local_job / "annotations.json").read_text())
    coco = load_ground_truth(local_job / "annotations.json")  # loads (and indexes) in pycocotools
    assert sorted(coco.getImgIds()) == sorted(SUBSET) and len(coco.getAnnIds()) == len(subset["detections"])
    assert [a["id"] for a in merged["annotations"]] == list(range(1, len(subset["detections"]) + 1))
    assert {c["id"] for c in merged["categories"]} >= {d["category_id"] for d in subset["detections"]}
    assert (local_job / "errors.jsonl").read_text() == ""


def test_ground_truth_masks_through_the_writer_score_ap_one(coco_mini, tmp_path):
    coco = load_ground_truth(coco_mini / "annotations" / COCO8)
    images = read_images(coco_mini / "annotations" / COCO8, coco_mini / "images")
    writer = ShardWriter(tmp_path, len(images.items), 3)
    for item in reversed(images.items):  # arrival order does not matter
        info = coco.imgs[item.image_id]
        anns = [a for a in coco.imgToAnns[item.image_id] if not a.get("iscrowd", 0)]
        records = [annotation(coco.annToMask(a).astype(bool), a["category_id"], 1.0, 1.0, 1.0, {"box": a["bbox"]}) for a in anns]
        head = {"index": item.index, "image_id": item.image_id, "file_name": item.file_name}
        writer.add({**head, "height": info["height"], "width": info["width"], "annotations": records})
    counts = merge(tmp_path, images.items, 3, coco.dataset["categories"], {})
    merged = json.loads((tmp_path / "annotations.json").read_text())
    assert (
        counts == {"labelled": 8, "failed": 0, "annotations": len(merged["annotations"]), "dropped_boxes": 0} and counts["annotations"] > 0
    )
    stats, _ = evaluate_segm(coco, merged["annotations"], coco.getImgIds())
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def _grid_args(folder: Path, out: Path, model_dir: Path) -> list[str]:
    """Everything mode at its cheapest: a 4x4 grid, no filtering."""
    options = ["--mode", "grid", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    return ["label", str(folder), "--everything", *options, "--model-dir", str(model_dir), "--out", str(out)]


def test_bad_images_go_to_errors_and_the_rest_is_labelled(coco_mini, parity_model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(coco_mini / "images" / "000000000025.jpg", folder / "a.jpg")
    shutil.copy(coco_mini / "images" / "000000000034.jpg", folder / "nested" / "d.jpg")
    (folder / "b_corrupt.jpg").write_bytes((coco_mini / "images" / "000000000030.jpg").read_bytes()[:40])
    (folder / "c_empty.png").write_bytes(b"")
    shutil.copy(coco_mini / "images" / "000000000030.jpg", os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))  # a name not in UTF-8
    out = tmp_path / "out"
    assert main([*_grid_args(folder, out, parity_model_dir), "--shard-size", "2"]) == 0
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["image_id"], e["file_name"]) for e in errors] == [(2, "b_corrupt.jpg"), (3, "c_empty.png"), (4, "caf\\xe9.jpg")]
    assert all("cannot decode" in e["error"] for e in errors[:2]) and "not valid UTF-8" in errors[2]["error"]
    merged = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in merged["images"]] == ["a.jpg", "nested/d.jpg"]
    assert merged["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}] and merged["annotations"]
    assert all(a["category_id"] == 1 and a["score"] == a["predicted_iou"] and "point" in a["prompt"] for a in merged["annotations"])
    assert "failed 3 this run" in capsys.readouterr().out


def test_image_lists(tmp_path):
    (tmp_path / "b" / ".hidden").mkdir(parents=True)
    for name in ("z.jpg", "b/a.PNG", "b/.hidden/x.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    folder = read_images(tmp_path)
    assert [(i.index, i.image_id, i.file_name) for i in folder.items] == [(0, 1, "b/a.PNG"), (1, 2, "z.jpg")]
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\nz.jpg\n\n/abs/photo.jpg\n")
    assert [(str(i.path), i.file_name) for i in read_images(listing).items] == [
        (str(tmp_path / "z.jpg"), "z.jpg"),
        ("/abs/photo.jpg", "/abs/photo.jpg"),
    ]
    coco = tmp_path / "images.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "z.jpg"}, {"id": 3, "file_name": "b/a.PNG"}]}))
    assert [(i.image_id, i.path) for i in read_images(coco, tmp_path / "root").items] == [
        (3, tmp_path / "root/b/a.PNG"),
        (7, tmp_path / "root/z.jpg"),
    ]
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]}))
    with pytest.raises(TinySamError, match="not unique"):
        read_images(coco)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--ray-address", "auto"], "--ray-address applies to --engine ray"),
        (["--batch-size", "2"], "--batch-size applies to --engine ray"),
        (["--resume", "--overwrite"], "not both"),
    ],
)
def test_option_errors_are_one_line(subset, tmp_path, capsys, extra, fragment):
    assert main(label_args(subset, tmp_path / "out", tmp_path / "no-model", *extra)) == 2
    assert fragment in capsys.readouterr().err


def test_boxes_need_image_ids(subset, tmp_path, capsys):
    args = ["label", str(subset["root"]), "--boxes", str(subset["boxes"]), "--model-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(args) == 2 and "COCO images JSON" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-3", "x", "1e9"])
def test_shard_size_is_validated_at_parse_time(subset, tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(label_args(subset, tmp_path / "out", tmp_path / "m", "--shard-size", value))
    assert exc.value.code == 2 and "--shard-size" in capsys.readouterr().err


def _driver(args: list[str]) -> subprocess.Popen:
    """A label run in a subprocess where importing ray fails (the local engine must never import it)."""
    code = f"import sys; sys.modules['ray'] = None; from tinysam_edge.cli import main; sys.exit(main({args!r}))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_job_resumes_without_duplicates(subset, parity_model_dir, local_job, tmp_path, capsys):
    out = tmp_path / "job"
    args = label_args(subset, out, parity_model_dir, "--shard-size", "1")
    driver = _driver(args)
    first = out / "shards" / "shard-00000.jsonl"
    deadline = time.monotonic() + 240
    while not first.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(30) == -signal.SIGKILL, driver.stderr.read()
    assert first.exists() and not (out / "annotations.json").exists()
    (out / "shards" / ".shard-00003.jsonl.tmp").write_text('{"index": 3, "half')  # what a kill mid-write leaves
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # an existing job is not silently redone
    assert main([*args, "--resume"]) == 0
    summary = capsys.readouterr().out
    skipped = int(summary.split("skipped ")[1].split()[0])
    assert 1 <= skipped < len(SUBSET) and f"done {len(SUBSET) - skipped} images" in summary
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"shard-{i:05d}.{x}" for i in range(len(SUBSET)) for x in ("jsonl", "sha256")
    ]
    assert [line["index"] for line in lines_of(out)] == list(range(len(SUBSET)))
    resumed, reference = (json.loads((d / "annotations.json").read_text()) for d in (out, local_job))
    assert resumed["annotations"] == reference["annotations"] and resumed["images"] == reference["images"]
    assert main([*args, "--resume"]) == 0 and "done 0 images" in capsys.readouterr().out  # nothing left: only the merge reruns
    assert json.loads((out / "annotations.json").read_text())["annotations"] == reference["annotations"]
    assert main([*args, "--resume", "--shard-size", "2"]) == 2 and "shard_size" in capsys.readouterr().err


def test_model_dir_ships_as_files(tmp_path):
    from tinysam_edge.label.ray_engine import pack_model_dir, unpack_model_dir

    source, dest = tmp_path / "model", tmp_path / "copy"
    source.mkdir(), dest.mkdir()
    (source / "manifest.json").write_text("{}")
    (source / "encoder.bin").write_bytes(bytes(range(256)))
    files = pack_model_dir(source)
    assert unpack_model_dir(files, dest) == dest and {p.name: p.read_bytes() for p in dest.iterdir()} == files and len(files) == 2
    with pytest.raises(TinySamError, match="path in its name"):
        unpack_model_dir({"../escape.bin": b""}, dest)


@pytest.fixture
def ray_tmp(monkeypatch):
    """A private RAY_TMPDIR (short: Ray's socket paths must fit 107 bytes); afterwards no Ray process of it may live and it is removed."""
    pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="tsr-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    import ray

    ray.shutdown()
    deadline = time.monotonic() + 30
    while _ray_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = _ray_processes(folder)
    shutil.rmtree(folder, ignore_errors=True)
    assert not survivors, f"Ray processes left behind: {survivors}"


def _ray_processes(folder: str) -> list[int]:
    """Ray processes whose environment names ``folder`` as RAY_TMPDIR (this test's Ray cluster and nothing else).

    Other children of the test process inherit the variable too, such as multiprocessing's resource tracker,
    which a spawn-context DataLoader starts and which lives as long as the test process: only Ray's count.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ours = f"RAY_TMPDIR={folder}".encode() in environ.split(b"\0") and int(pid) != os.getpid()
        if ours and b"ray" in command.lower():
            found.append(int(pid))
    return found


def test_ray_engine_matches_local(subset, parity_model_dir, local_job, ray_tmp, tmp_path):
    out = tmp_path / "ray"
    assert (
        main(label_args(subset, out, parity_model_dir, "--shard-size", "3", "--engine", "ray", "--workers", "2", "--batch-size", "1")) == 0
    )
    ray_result, reference = (json.loads((d / "annotations.json").read_text()) for d in (out, local_job))
    # same RLEs, scores, IoU and stability, same ids. Exact equality holds for these 4 images whichever actor labels which
    # (checked for every labelling order); larger sets can differ by float rounding, see docs/labelling.md
    assert ray_result["annotations"] == reference["annotations"]
    assert ray_result["images"] == reference["images"] and lines_of(out) == lines_of(local_job)


@pytest.mark.slow
def test_ray_actor_killed_mid_run_is_retried(subset, parity_model_dir, local_job, ray_tmp, tmp_path):
    out = tmp_path / "ray"
    args = label_args(subset, out, parity_model_dir, "--shard-size", "1", "--engine", "ray", "--workers", "1", "--batch-size", "1")
    driver = subprocess.Popen([sys.executable, "-m", "tinysam_edge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "shards" / "shard-00000.jsonl").exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    actors = [pid for pid in _ray_processes(ray_tmp) if b"LabelActor" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert actors, "no LabelActor process found"
    os.kill(actors[0], signal.SIGKILL)
    assert len(list((out / "shards").glob("shard-*.jsonl"))) < len(SUBSET)  # killed while images were still to do
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr
    assert f"done {len(SUBSET)} images" in stdout and "failed 0" in stdout
    assert (
        json.loads((out / "annotations.json").read_text())["annotations"]
        == json.loads((local_job / "annotations.json").read_text())["annotations"]
    )


@pytest.mark.slow
def test_teacher_cache_on_ray_equals_the_local_one(coco_mini, parity_dir, ray_tmp, tmp_path):
    torch = pytest.importorskip("torch")
    from tinysam_edge.models.training import cache_teacher
    from tinysam_edge.models.training.teacher_cache_ray import cache_teacher_ray

    data = json.loads((coco_mini / "annotations" / COCO8).read_text())
    data["images"] = [i for i in data["images"] if i["id"] in SUBSET[:3]]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in SUBSET[:3]]
    annotations = tmp_path / "three.json"
    annotations.write_text(json.dumps(data))
    common = (str(parity_dir / "weights.pt"), str(coco_mini / "images"))
    cache_teacher(*common, str(tmp_path / "local"), str(annotations), flip=True, log=lambda _: None)
    # as many torch threads as the local run: the encoder's float sums then match bit for bit
    cache_teacher_ray(
        *common, str(tmp_path / "ray"), str(annotations), flip=True, cpus_per_worker=torch.get_num_threads(), log=lambda _: None
    )
    local, remote = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("local", "ray"))
    assert local == remote and len(local) == 7  # meta.json + 3 images x (plain, flipped)
    for name in local:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name


def _drop_image_id(text: bytes) -> bytes:
    lines = text.decode().splitlines()
    line = json.loads(lines[0])
    del line["image_id"]
    return "\n".join([json.dumps(line), *lines[1:]]).encode() + b"\n"


def _rename(text: bytes) -> bytes:
    return text.replace(b'"file_name":"', b'"file_name":"renamed-', 1)


TAMPERINGS = {
    "line without image_id": (_drop_image_id, "does not match the checksum"),
    "invalid UTF-8 appended": (lambda text: text + b"\xff\xfe garbage\n", "does not match the checksum"),
    "file_name edited": (_rename, "does not match the checksum"),
    "file_name edited, checksum rewritten": (_rename, "is not that image's record"),
    "checksum deleted": (lambda text: text, "no checksum was recorded"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_damaged_shards_are_found_and_deleted(local_job, subset, tmp_path, case):
    import hashlib

    change, reason = TAMPERINGS[case]
    out = tmp_path / "job"
    shutil.copytree(local_job, out)
    shard, record = out / "shards" / "shard-00000.jsonl", out / "shards" / "shard-00000.sha256"
    shard.write_bytes(change(shard.read_bytes()))
    if "rewritten" in case:
        record.write_text(f"{hashlib.sha256(shard.read_bytes()).hexdigest()}  {shard.name}\n")
    if "deleted" in case:
        record.unlink()
    items = read_images(subset["images"], subset["root"]).items
    done, damaged = complete_shards(out, items, 3)
    assert done == {1} and len(damaged) == 1 and damaged[0].startswith("shard-00000.jsonl: ") and reason in damaged[0]
    assert not shard.exists() and not record.exists()  # deleted, to be redone
    assert complete_shards(local_job, items, 3) == ({0, 1}, [])  # the untouched job is whole


def test_resume_redoes_a_damaged_shard(subset, parity_model_dir, local_job, tmp_path, capsys):
    out = tmp_path / "job"
    shutil.copytree(local_job, out)
    last = out / "shards" / "shard-00001.jsonl"  # one image: the cheapest shard to redo
    last.write_bytes(_drop_image_id(last.read_bytes()))
    assert main([*label_args(subset, out, parity_model_dir, "--shard-size", "3"), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "done 1 images" in captured.out and "skipped 3" in captured.out and "redid 1 damaged shards" in captured.out
    assert "redoing shard-00001.jsonl" in captured.err
    assert lines_of(out) == lines_of(local_job)
    assert (
        json.loads((out / "annotations.json").read_text())["annotations"]
        == json.loads((local_job / "annotations.json").read_text())["annotations"]
    )


def test_boxes_empty_inside_the_image_are_dropped(subset, parity_model_dir, tmp_path, capsys):
    image = json.loads(subset["images"].read_text())["images"][0]
    w = image["width"]
    images = tmp_path / "one.json"
    images.write_text(json.dumps({"images": [image], "categories": [{"id": 1, "name": "thing"}]}))
    boxes = [[10, 10, 50, 40], [w + 5, 10, 30, 30], [20, 20, 0, 15], [-40, -40, 30, 30], [30, 40, 20, 0]]
    detections = tmp_path / "dets.json"
    detections.write_text(json.dumps([{"image_id": image["id"], "category_id": 1, "bbox": b, "score": 0.9} for b in boxes]))
    out = tmp_path / "out"
    args = ["label", str(images), "--image-root", str(subset["root"]), "--boxes", str(detections), "--model-dir", str(parity_model_dir)]
    assert main([*args, "--out", str(out)]) == 0
    (line,) = lines_of(out)
    assert len(line["annotations"]) == 1 and line["annotations"][0]["prompt"]["box"] == [10, 10, 50, 40]
    assert line["dropped_boxes"] == boxes[1:]
    (error,) = [json.loads(e) for e in (out / "errors.jsonl").read_text().splitlines()]
    assert error["image_id"] == image["id"] and error["dropped_boxes"] == boxes[1:] and "4 boxes are empty" in error["warning"]
    assert "4 boxes dropped" in capsys.readouterr().out
    assert len(json.loads((out / "annotations.json").read_text())["annotations"]) == 1


def test_ctrl_c_stops_at_once_with_a_resume_hint(coco_mini, parity_model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000000000025.jpg", "000000000030.jpg", "000000000034.jpg"):
        shutil.copy(coco_mini / "images" / name, folder / name)
    out = tmp_path / "out"
    args = [*_grid_args(folder, out, parity_model_dir), "--shard-size", "1"]
    # Python keeps SIGINT ignored if it starts ignored (a child of a background job): give the child the usual handler
    handler = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
    code = f"{handler}; import sys; from tinysam_edge.cli import main; sys.exit(main({args!r}))"
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for started in iter(driver.stderr.readline, ""):  # "labelling 3 of 3 images ...": the worker compiles or labels now
        if started.startswith("labelling"):
            break
    assert started.startswith("labelling"), started + driver.stderr.read()
    time.sleep(0.5)
    driver.send_signal(signal.SIGINT)
    sent = time.monotonic()
    stderr = driver.communicate(timeout=60)[1]
    print(f"exit {time.monotonic() - sent:.1f} s after SIGINT")  # about 0.3 s here; it waited for the worker before
    assert driver.returncode == 130 and "run the same command with --resume" in stderr and "Traceback" not in stderr
    shards = sorted(p.name for p in (out / "shards").iterdir()) if (out / "shards").exists() else []
    assert all(not name.startswith(".") for name in shards) and len(shards) % 2 == 0  # whole shards, each with its checksum


def test_image_lists_flag_names_that_are_not_utf8(tmp_path):
    coco = tmp_path / "images.json"
    coco.write_text('{"images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": "caf\\ud800.jpg"}]}')  # a lone surrogate
    ok, bad = read_images(coco).items
    assert ok.error is None and bad.file_name == "caf\\ud800.jpg" and "not valid UTF-8" in bad.error
    assert len(read_images(coco).fingerprint()) == 64  # the job can be described (and resumed) with such a name in it
