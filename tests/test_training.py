"""Distillation training: hard prompt sampling, losses, datasets, teacher cache, config, and a CPU smoke run."""

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DATA, PARITY, require

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from pycocotools import mask as mask_utils

from tinysam_edge.cli import main
from tinysam_edge.errors import TinySamError
from tinysam_edge.image import load_image
from tinysam_edge.models import build_sam
from tinysam_edge.models.training import cache_teacher, losses
from tinysam_edge.models.training.cache_builder import build_cache
from tinysam_edge.models.training.config import read_config
from tinysam_edge.models.training.data import SegmentationDataset, collate, encoder_inputs, make_loader
from tinysam_edge.models.training.prompt_sampling import CELL, SamplerConfig, draw_objects, error_points, first_prompts, hard_prompts
from tinysam_edge.models.training.records import load_records, split_records, to_low_res
from tinysam_edge.models.training.teacher_cache import CacheMeta, open_cache
from tinysam_edge.transforms import preprocess

COCO_IMAGES = DATA / "coco_mini" / "images"
COCO8 = DATA / "coco_mini" / "annotations" / "instances_coco8seg.json"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _square_masks(k: int, size: int = 256) -> torch.Tensor:
    gt = torch.zeros(k, size, size, dtype=torch.bool)
    for i in range(k):
        gt[i, 10 + i : 60 + 3 * i, 20 : 80 + 2 * i] = True
    return gt


def _cells(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cells = torch.div(coords, CELL, rounding_mode="floor").long()
    return cells[..., 0], cells[..., 1]


# -- online hard prompt sampling -------------------------------------------------------------------


def test_error_points_lie_in_error_region_with_matching_labels():
    gen = _gen(0)
    gt = torch.rand(64, 32, 32, generator=gen) > 0.6
    pred = torch.rand(64, 32, 32, generator=gen) > 0.6
    pred[0] = gt[0]  # a perfect prediction has no error region
    valid = torch.zeros(32, 32, dtype=torch.bool)
    valid[:30, :25] = True
    coords, labels, found = error_points(pred, gt, valid, torch.rand(64, generator=gen), torch.randint(0, CELL, (64, 2), generator=gen))
    x, y = _cells(coords)
    rows = torch.arange(64)
    error = (pred ^ gt) & valid
    assert not found[0] and found[1:].all()
    assert error[rows[found], y[found], x[found]].all()
    assert torch.equal(labels[found], gt[rows, y, x][found].long())  # missed -> positive, false positive -> negative
    assert set(labels[found].tolist()) == {0, 1}


def test_first_prompt_point_inside_gt_and_box_layout():
    gt = _square_masks(50)
    boxes = torch.tensor([[80.0, 40.0, 320.0, 240.0]]).repeat(50, 1)
    config = SamplerConfig(box_prob=0.5, max_iterations=3)
    sizes = torch.tensor([[1024, 768]]).repeat(50, 1)
    prompts = first_prompts(gt, boxes, sizes, config, draw_objects(50, config, _gen(1), torch.device("cpu")))
    is_box = prompts.labels[:, 0] == 2
    assert 0 < is_box.sum() < 50 and prompts.labels.shape == (50, 5)
    x, y = _cells(prompts.coords[~is_box, 0])
    assert gt[(~is_box).nonzero().squeeze(1), y, x].all()
    assert (prompts.labels[~is_box, 1] == -1).all() and (prompts.labels[is_box, 1] == 3).all()
    assert (prompts.labels[:, 2:] == -2).all()
    corners = prompts.coords[is_box, :2]
    assert (corners[:, 0] <= corners[:, 1]).all() and (corners[..., 0] <= 768).all()


def test_hard_prompts_follow_iteration_range_and_predictions():
    gt = _square_masks(200)
    boxes = torch.zeros(200, 4)
    config = SamplerConfig(box_prob=0.0, min_iterations=2, max_iterations=5)
    predictions = []

    def predict(prompts):
        # a fixed wrong prediction (a shifted square) per call, recorded to check the sampled points
        pred = torch.roll(gt, shifts=7 + len(predictions), dims=2)
        predictions.append((pred, prompts.labels.clone()))
        return pred

    sizes = torch.tensor([[1024, 1024]]).repeat(200, 1)
    draws = draw_objects(200, config, _gen(2), torch.device("cpu"))
    prompts = hard_prompts(predict, gt, boxes, sizes, config, draws, config.max_iterations)
    extra = (prompts.labels[:, 2:] >= 0).sum(1)
    assert extra.min() == 2 and extra.max() == 5  # uniform over the inclusive range, both ends drawn
    assert len(predictions) == 5
    for step, (pred, _) in enumerate(predictions):
        added = prompts.labels[:, 2 + step] >= 0
        x, y = _cells(prompts.coords[added, 2 + step])
        assert ((pred ^ gt)[added.nonzero().squeeze(1), y, x]).all()
    # points accumulate: the prompts seen at step s still hold every point of the earlier steps
    for step, (_, seen) in enumerate(predictions[1:], start=1):
        assert torch.equal(seen[:, : 2 + step], prompts.labels[:, : 2 + step])


def test_hard_prompts_are_deterministic_with_a_seed():
    gt = _square_masks(20)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0]]).repeat(20, 1)

    def predict(prompts):
        return torch.zeros_like(gt)

    sizes, config, cpu = torch.tensor([[1024, 1024]]).repeat(20, 1), SamplerConfig(), torch.device("cpu")
    runs = [hard_prompts(predict, gt, boxes, sizes, config, draw_objects(20, config, _gen(s), cpu), 9) for s in (3, 3, 4)]
    assert torch.equal(runs[0].coords, runs[1].coords) and torch.equal(runs[0].labels, runs[1].labels)
    assert not torch.equal(runs[0].coords, runs[2].coords)


def test_sampler_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="iterations"):
        SamplerConfig(min_iterations=4, max_iterations=2)


# -- losses on hand-computed tensors ---------------------------------------------------------------


def test_hard_mask_weights_formula():
    h = losses.hard_mask_weights(torch.tensor([0.8, 0.5, 0.0]), torch.tensor([0.4, 0.5, 0.9]))
    expected = [1 / (1 + math.exp(-1.0)), 0.5, 1 / (1 + math.exp(1.0))]  # sigmoid(0.8/0.4-1), sigmoid(0), sigmoid(-1)
    assert h.tolist() == pytest.approx(expected, abs=1e-5)


def test_focal_dice_iou_by_hand():
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # logits 0: p = 0.5 everywhere; focal per pixel = w_alpha * 0.25 * ln 2 with w_alpha 0.25 (pos) / 0.75 (neg)
    focal = losses.sigmoid_focal_loss(torch.zeros(1, 2, 2), target)
    assert focal.item() == pytest.approx((2 * 0.25 + 2 * 0.75) * 0.25 * math.log(2) / 4, rel=1e-5)
    # p = 1 everywhere: dice = 1 - (2*2 + 1) / (4 + 2 + 1)
    assert losses.dice_loss(torch.full((1, 2, 2), 50.0), target).item() == pytest.approx(2 / 7, abs=1e-5)
    pred = torch.tensor([[[True, False], [False, False]]])
    assert losses.mask_iou(pred, target.bool()).item() == pytest.approx(0.5)
    assert losses.mask_iou(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 1.0
    assert losses.l1(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 0.0]]), 1).item() == 1.0


def test_supervised_tokens_follow_the_flavour():
    points, box = torch.tensor([1, 1, 3]), torch.tensor([False, True, False])
    assert losses.supervised_tokens(points, box, "tinysam").tolist() == [[False, True, True, True]] * 3
    assert losses.supervised_tokens(points, box, "sam").tolist() == [
        [False, True, True, True],
        [True, False, False, False],
        [True, False, False, False],
    ]


def test_prompt_losses_by_hand():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2] = True
    good = torch.where(gt, 20.0, -20.0)  # near-perfect logits
    bad = -good
    s_masks = torch.stack([good, bad, good, bad], dim=1)  # token 0 and 2 right, 1 and 3 wrong
    t_masks = torch.stack([good, good, good, bad], dim=1)
    student = {"masks": s_masks, "iou": torch.tensor([[1.0, 0.5, 1.0, 0.0]]), "tokens": torch.ones(1, 5, 3)}
    teacher = {"masks": t_masks, "tokens": torch.zeros(1, 5, 3)}
    w = losses.LossWeights(hard_mask_weighting=False)
    terms = losses.prompt_losses(student, teacher, gt, losses.supervised_tokens(torch.tensor([1]), torch.tensor([False]), "tinysam"), w)
    assert terms["token"].item() == pytest.approx(1.0)
    assert terms["output"].item() == pytest.approx(40.0 / 4)  # only token 1 differs, by 40 on every pixel
    assert terms["mask"].item() < 1e-3  # the best candidate (token 2) is right
    assert terms["iou"].item() == pytest.approx(0.5 / 4)  # actual IoUs 1, 0, 1, 0
    assert terms["total"].item() == pytest.approx(1.0 + 10.0 + terms["mask"].item() + 0.125, rel=1e-5)
    hmw = losses.prompt_losses(student, teacher, gt, torch.tensor([[False, True, True, True]]), losses.LossWeights())
    # token 1: teacher IoU 1, student 0 -> weight sigmoid(1/eps - 1) ~ 1
    assert hmw["output"].item() == pytest.approx(40.0 / 4, rel=1e-4)
    assert hmw["hard_weight"].item() == pytest.approx((0.5 + 1.0 + 0.5 + 1 / (1 + math.exp(1.0))) / 4, rel=1e-4)


# -- data -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_sa1b(tmp_path_factory):
    """A tiny SA-1B-layout folder of generated shapes: sa_N.jpg next to sa_N.json with COCO RLE masks."""
    root = tmp_path_factory.mktemp("sa1b")
    rng = np.random.default_rng(0)
    for n in range(4):
        h, w = 300 + 40 * n, 420
        image = np.full((h, w, 3), 40, np.uint8)
        anns = []
        for k in range(3):
            mask = np.zeros((h, w), np.uint8)
            center = (int(rng.integers(60, w - 60)), int(rng.integers(60, h - 60)))
            cv2.ellipse(mask, center, (int(rng.integers(20, 60)), int(rng.integers(20, 60))), 0, 0, 360, 1, -1)
            image[mask > 0] = rng.integers(80, 255, 3)
            rle = mask_utils.encode(np.asfortranarray(mask))
            anns.append({"id": k, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "area": int(mask.sum())})
        cv2.imwrite(str(root / f"sa_{n}.jpg"), image)
        (root / f"sa_{n}.json").write_text(
            json.dumps({"image": {"image_id": n, "height": h, "width": w, "file_name": f"sa_{n}.jpg"}, "annotations": anns})
        )
    return root


def test_sa1b_dataset_decodes_masks_into_the_input_frame(shapes_sa1b):
    records = load_records(shapes_sa1b)
    assert [r.key for r in records] == ["sa_0", "sa_1", "sa_2", "sa_3"]
    sample = SegmentationDataset(records, max_masks=8)[1]
    ann = records[1].annotations[0]
    mask = mask_utils.decode(ann["segmentation"]).astype(bool)
    assert sample["image"].shape == (829, 1024, 3) and sample["image"].dtype == torch.uint8 and sample["masks"].shape == (3, 256, 256)
    assert sample["input_size"] == (829, 1024)  # 340x420 scaled to a 1024 long side
    expected = {
        m.sum() for m in (to_low_res(mask_utils.decode(a["segmentation"]).astype(bool), (829, 1024)) for a in records[1].annotations)
    }
    assert {int(m.sum()) for m in sample["masks"]} == {int(v) for v in expected}
    assert not sample["masks"][:, 208:].any()  # nothing in the padding below ceil(829 / 4)
    assert (sample["boxes"][:, 2:] <= torch.tensor([1024.0, 829.0])).all()
    low = torch.from_numpy(to_low_res(mask, (829, 1024)))
    assert any(torch.equal(m, low) for m in sample["masks"])  # the first annotation, resampled into the input frame


def test_flips_are_seeded_per_sample_and_mirror_masks(shapes_sa1b):
    records = load_records(shapes_sa1b)
    data = SegmentationDataset(records, flip=True, seed=5)
    draws = [[data[i]["flipped"] for i in range(4)] for _ in range(2)]
    assert draws[0] == draws[1] == [data[(0, i)]["flipped"] for i in range(4)]
    flips = {data[(1, i)]["flipped"] for i in range(4)} | set(draws[0])
    assert flips == {True, False}
    plain = SegmentationDataset(records, flip=False)
    for i in range(4):
        s, p = data[i], plain[i]
        if s["flipped"]:  # every mask is the mirror image of one of the unflipped sample's masks (the width is 1024 here)
            assert s["input_size"][1] == 1024
            for m in s["masks"]:
                assert max(losses.mask_iou(m.flip(-1), q).item() for q in p["masks"]) > 0.98


def test_persistent_workers_draw_each_epochs_subsets_and_flips(shapes_sa1b):
    """Workers live across epochs; the epoch travels with each index, so epoch 2 differs from epoch 1 as without workers."""
    data = SegmentationDataset(load_records(shapes_sa1b), max_masks=2, flip=True, seed=1)
    epochs = {}
    for workers in (0, 1):
        loader = make_loader(data, batch_size=2, num_workers=workers, shuffle=True, seed=3)
        assert loader.persistent_workers == (workers > 0)
        epochs[workers] = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            epochs[workers].append([(b["key"], b["flipped"].tolist(), b["masks"].sum((1, 2)).tolist()) for b in loader])
    assert epochs[0] == epochs[1]
    assert epochs[0][0] != epochs[0][1]  # another order, other flips and object subsets
    loader.sampler.set_epoch(1, start=2)  # a resumed epoch skips what was trained already
    assert [b["key"] for b in loader] == [epochs[0][1][1][0]]


def test_device_preprocessing_equals_the_runtime_preprocessing(shapes_sa1b):
    data = SegmentationDataset(load_records(shapes_sa1b), flip=True, seed=0)
    batch = collate([data[(0, i)] for i in range(4)] + [data[(1, i)] for i in range(4)])
    assert set(batch["flipped"].tolist()) == {True, False}
    inputs = encoder_inputs(batch["image"], batch["input_size"], batch["flipped"], torch.device("cpu"))
    for row, (key, flipped) in enumerate(zip(batch["key"], batch["flipped"].tolist(), strict=True)):
        image = load_image(shapes_sa1b / f"{key}.jpg")
        expected, _ = preprocess(np.ascontiguousarray(image[:, ::-1]) if flipped else image)
        assert torch.equal(inputs[row], torch.from_numpy(expected[0]))


def test_split_is_deterministic_and_disjoint(shapes_sa1b):
    records = load_records(shapes_sa1b)
    train, val = split_records(records, 0.25, seed=0)
    assert len(val) == 1 and len(train) == 3 and not {r.key for r in train} & {r.key for r in val}
    assert split_records(records, 0.25, seed=0) == (train, val)


def test_sa1b_without_annotation_file_is_a_clear_error(tmp_path):
    cv2.imwrite(str(tmp_path / "sa_9.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no annotation file sa_9.json"):
        load_records(tmp_path)


def test_coco_dataset_reads_coco_mini():
    records = load_records(require(COCO_IMAGES), require(COCO8))
    assert len(records) == 8
    sample = SegmentationDataset(records, max_masks=4)[0]
    assert 1 <= sample["masks"].shape[0] <= 4 and sample["boxes"].shape == (sample["masks"].shape[0], 4)


# -- teacher cache ---------------------------------------------------------------------------------


def test_teacher_cache_is_fp16_resumable_and_refuses_another_teacher(shapes_sa1b, tmp_path):
    data = SegmentationDataset(load_records(shapes_sa1b))
    keys = [r.key for r in data.records]
    batches = []

    def encode(inputs):  # each embedding holds the mean of its input: flips and batches stay traceable
        batches.append(inputs.shape[0])
        return inputs.mean((1, 2, 3))[:, None, None, None].expand(-1, 256, 64, 64)

    meta = CacheMeta("vit_t", "t.pth", "a" * 64, flips=True)
    cpu = torch.device("cpu")
    cache = build_cache(encode, data, tmp_path / "cache", meta, cpu, batch_size=3, log=lambda *_: None)
    assert batches == [6, 2] and cache.missing(keys) == []  # 3 images and their flips per batch
    emb = cache.load("sa_2", flipped=True)
    assert emb.dtype == np.float16 and emb.shape == (1, 256, 64, 64)
    image, _ = data.load_input(2, flipped=True)
    assert abs(float(emb[0, 0, 0, 0]) - image.mean(dtype=np.float64)) < 2e-3
    cache.path("sa_1", flipped=True).unlink()
    cache.path("sa_3").write_bytes(b"")  # an interrupted copy: a zero-byte embedding
    assert cache.missing(keys) == ["sa_1", "sa_3"]
    with pytest.raises(TinySamError, match=r"sa_3\.npy is damaged"):
        cache.load("sa_3")
    before = {k: cache.path(k).stat().st_mtime_ns for k in ("sa_0", "sa_1")}
    build_cache(encode, data, tmp_path / "cache", meta, cpu, batch_size=3, log=lambda *_: None)
    assert batches[2:] == [4] and cache.missing(keys) == []  # only the two images with a missing or damaged file
    assert cache.path("sa_0").stat().st_mtime_ns == before["sa_0"] and cache.path("sa_1").stat().st_mtime_ns == before["sa_1"]
    other = CacheMeta("vit_b", "b.pth", "b" * 64, flips=True)
    with pytest.raises(TinySamError, match="another teacher"):
        build_cache(encode, data, tmp_path / "cache", other, cpu, log=lambda *_: None)
    with pytest.raises(ValueError, match="flipped teacher embeddings"):
        SegmentationDataset(data.records, flip=True, teacher_cache=open_cache(tmp_path / "c2", CacheMeta("vit_t", "t", "a", False)))


# -- config ----------------------------------------------------------------------------------------


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 1\n[loss]\ntoken = 0.5\n")
    config = read_config(path, ["optim.max_steps=7", "run.out=somewhere", "sampler.max_iterations=2"])
    assert config.optim.lr == 1.0 and config.loss.token == 0.5 and config.optim.max_steps == 7
    assert config.run.out == "somewhere" and config.sampler.slots == 4
    path.write_text("[optim]\nlearning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        read_config(path)
    path.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ValueError, match="lr must be float"):
        read_config(path)


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("optim:\n  batch_size: 3\n")
    assert read_config(yaml_path).optim.batch_size == 3
    yaml_path.write_text("- a list\n")
    with pytest.raises(ValueError, match="table of sections"):
        read_config(yaml_path)


def test_toml_without_tomllib_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 1\n")
    monkeypatch.setitem(sys.modules, "tomli", pytest.importorskip("tomllib"))
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10: no tomllib, the tomli package instead
    assert read_config(path, ["optim.max_steps=3"]).optim.max_steps == 3
    monkeypatch.setitem(sys.modules, "tomli", None)  # ... and without it
    with pytest.raises(TinySamError, match="tomli"):
        read_config(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.max_steps=-5", r"max_steps must be >= 0"),
        ("optim.batch_size=0", r"batch_size must be >= 1"),
        ("optim.lr=nan", "finite"),
        ("data.val_fraction=1.5", r"val_fraction must be in \[0, 1\]"),
        ("run.amp=fp8", "amp must be one of"),
        ("student.model=vit_x", "model must be one of"),
    ],
)
def test_config_values_are_range_checked(tmp_path, override, match):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ValueError, match=match):
        read_config(path, [override])


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "distill", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\nout = "{tmp_path / "run"}"\n')
    assert main(["train", "distill", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    assert main(["train", "distill", "--config", str(cfg), "--set", "optim.max_steps=-5"]) == 2
    assert "max_steps must be >= 0" in capsys.readouterr().err


def test_cache_teacher_refuses_bad_device_and_annotations(random_checkpoint, shapes_sa1b, tmp_path, capsys):
    cache = ["train", "cache-teacher", "--teacher", str(random_checkpoint), "--images", str(shapes_sa1b), "--out", str(tmp_path / "c")]
    for device, match in (("XPU", "unknown training device 'XPU'"), ("cuda:99", "cuda:99 requested")):
        with pytest.raises(TinySamError, match=match):
            cache_teacher(str(random_checkpoint), str(shapes_sa1b), str(tmp_path / "c"), device=device)
    (tmp_path / "list.json").write_text("[]")
    assert main([*cache, "--annotations", str(tmp_path / "list.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a COCO instances file" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def _cache_config(random_checkpoint, shapes_sa1b, cache, out):
    from tinysam_edge.models.training.config import config_from_dict

    return config_from_dict(
        {
            "data": {"images": str(shapes_sa1b), "val_fraction": 0.0, "num_workers": 0, "flip": False},
            "teacher": {"checkpoint": str(random_checkpoint), "cache": str(cache)},
            "optim": {"batch_size": 1, "max_steps": 1},
            "run": {"out": str(out), "device": "cpu"},
        }
    )


def test_damaged_teacher_embedding_is_named_before_training(random_checkpoint, shapes_sa1b, tmp_path):
    from tinysam_edge.models.training.distill import load_training_data
    from tinysam_edge.weights import sha256_file

    keys = [r.key for r in load_records(shapes_sa1b)]
    cache = open_cache(tmp_path / "c", CacheMeta("vit_t", random_checkpoint.name, sha256_file(random_checkpoint), flips=False))
    for key in keys:
        cache.store(key, False, np.zeros((1, 256, 64, 64), np.float32))
    cache.path("sa_2").write_bytes(b"")
    with pytest.raises(TinySamError, match=r"sa_2\.npy, missing or damaged"):
        load_training_data(_cache_config(random_checkpoint, shapes_sa1b, tmp_path / "c", tmp_path / "run"))


# -- smoke run -------------------------------------------------------------------------------------


def _cli(*args) -> None:
    """Run the CLI in a child process, as a user would (it also keeps training state out of the test process)."""
    result = subprocess.run(
        [sys.executable, "-m", "tinysam_edge", *map(str, args)], check=False, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _smoke(random_checkpoint: Path, shapes_sa1b: Path, tmp: Path, steps: int) -> Path:
    """cache-teacher + ``steps`` distillation steps through the CLI: parity weights (else a random model) teach a fresh student."""
    if COCO8.is_file():
        images = tmp / "images"  # three coco_mini images (links, not copies)
        images.mkdir()
        for name in sorted(p.name for p in COCO_IMAGES.iterdir())[:3]:
            (images / name).symlink_to(COCO_IMAGES / name)
        data = ["--images", str(images), "--annotations", str(COCO8)]
        data_cfg = f'images = "{images}"\nannotations = "{COCO8}"\n'
    else:
        data = ["--images", str(shapes_sa1b)]
        data_cfg = f'images = "{shapes_sa1b}"\nlimit = 3\n'
    teacher = str(PARITY / "weights.pt" if (PARITY / "weights.pt").is_file() else random_checkpoint)
    _cli("train", "cache-teacher", "--teacher", teacher, *data, "--out", tmp / "cache")
    config = tmp / "smoke.toml"
    config.write_text(
        f"[data]\n{data_cfg}val_fraction = 0.34\nmax_masks = 4\nflip = false\nnum_workers = 0\nval_max_images = 1\n"
        f'[teacher]\ncheckpoint = "{teacher}"\ncache = "{tmp / "cache"}"\n'
        '[student]\ninit = "scratch"\ndecoder_from_teacher = false\n'
        "[sampler]\nmax_iterations = 2\n"
        f"[optim]\nlr = 1e-3\nwarmup_steps = 2\nmax_steps = {steps}\nbatch_size = 1\n"
        f'[run]\nout = "{tmp / "run"}"\nlog_every = 1\nval_every = {steps}\nsave_every = {steps // 2}\n'
    )
    _cli("train", "distill", "--config", config)
    return tmp


@pytest.fixture(scope="module")
def smoke_run(random_checkpoint, shapes_sa1b, tmp_path_factory):
    """The default suite's smoke run: 4 steps, enough to checkpoint, export and resume."""
    return _smoke(random_checkpoint, shapes_sa1b, tmp_path_factory.mktemp("smoke"), steps=4)


def _log_rows(run) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_distillation_loss_goes_down(random_checkpoint, shapes_sa1b, tmp_path):
    """20 steps (about 100 s on 2 cores, so in the slow suite): the loss falls and the outputs are complete."""
    smoke_run = _smoke(random_checkpoint, shapes_sa1b, tmp_path, steps=20)
    rows = _log_rows(smoke_run / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    total = [float(r["total"]) for r in rows]
    assert np.mean(total[-5:]) < 0.8 * np.mean(total[:5])
    embedding = [float(r["embedding"]) for r in rows]
    assert np.mean(embedding[-5:]) < np.mean(embedding[:5])
    with open(smoke_run / "run" / "val.csv") as f:
        vals = list(csv.DictReader(f))
    assert [int(v["step"]) for v in vals] == [0, 20] and all(0 <= float(v["box_miou"]) <= 1 for v in vals)
    assert (smoke_run / "run" / "training.png").stat().st_size > 10_000


def test_smoke_checkpoint_reloads_strictly_and_exports(smoke_run, tmp_path):
    pytest.importorskip("openvino")
    from tinysam_edge.manifest import Manifest
    from tinysam_edge.quantize.export import export_checkpoint

    ckpt = smoke_run / "run" / "student_last.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = build_sam("vit_t", checkpoint=ckpt)
    assert build_sam("auto", checkpoint=ckpt).flavour == "tinysam"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    export_checkpoint(ckpt, tmp_path / "ir", log=lambda *_: None)
    assert Manifest.read(tmp_path / "ir").source["name"] == "student_last.pth"


def _private_run(smoke_run, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the smoke run's folder and the CLI arguments that continue it there (the shared run stays as it is)."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    return run, ["train", "distill", "--config", str(smoke_run / "smoke.toml"), "--set", f'run.out="{run}"', "--resume"]


STOP_AT_STEP = """
import os, signal, sys
from tinysam_edge.cli import main
from tinysam_edge.models.training import distill
update = distill.Distiller.update
def stop_after(self, batch):
    terms = update(self, batch)
    if self.step == {step}:
        os.kill(os.getpid(), signal.{signal})
    return terms
distill.Distiller.update = stop_after
sys.exit(main({argv!r}))
"""


def _stopped_run(smoke_run, out: Path, signal: str, step: int) -> subprocess.CompletedProcess:
    """The smoke run's config in ``out`` with one loader worker, sent ``signal`` by itself right after ``step``."""
    argv = ["train", "distill", "--config", str(smoke_run / "smoke.toml"), "--set", f'run.out="{out}"', "--set", "data.num_workers=1"]
    code = STOP_AT_STEP.format(step=step, signal=signal, argv=argv)
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=900)


def test_sigterm_saves_the_state_and_resume_continues_bit_for_bit(smoke_run, tmp_path):
    out = tmp_path / "run"
    stopped = _stopped_run(smoke_run, out, "SIGTERM", 2)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == "tinysam-edge: terminated"
    assert "Traceback" not in stopped.stderr and "_workers_status" not in stopped.stderr
    assert torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)["step"] == 2
    _cli("train", "distill", "--config", smoke_run / "smoke.toml", "--set", f'run.out="{out}"', "--resume")
    assert [int(r["step"]) for r in _log_rows(out)] == list(range(1, 5))
    resumed = torch.load(out / "student_last.pth", map_location="cpu", weights_only=True)
    straight = torch.load(smoke_run / "run" / "student_last.pth", map_location="cpu", weights_only=True)
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_ctrl_c_saves_the_state_and_exits_130(smoke_run, tmp_path):
    stopped = _stopped_run(smoke_run, tmp_path / "run", "SIGINT", 1)
    assert stopped.returncode == 130 and stopped.stderr.strip().splitlines()[-1] == "tinysam-edge: interrupted"
    assert "Traceback" not in stopped.stderr
    assert torch.load(tmp_path / "run" / "train_state.pt", map_location="cpu", weights_only=True)["step"] == 1


def test_checkpoints_have_the_official_439_tensor_layout(tmp_path):
    from tinysam_edge.models import save_checkpoint

    meta = json.loads(require(PARITY / "meta.json").read_text())
    save_checkpoint(build_sam("vit_t"), tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", map_location="cpu", weights_only=True)
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in meta["state_dict_keys"]]
    assert len(state) == 439 and build_sam("auto", checkpoint=tmp_path / "s.pth").flavour == "tinysam"


def test_cuda_without_an_index_takes_the_local_rank(monkeypatch):
    from tinysam_edge.models.training import devices

    monkeypatch.setattr(devices, "_backend_available", lambda kind: True)
    monkeypatch.setattr(devices, "_device_count", lambda kind: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.training_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert devices.training_device("cuda") == torch.device("cuda", 2)
    assert devices.training_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(TinySamError, match="cuda:5 requested but this machine has 4"):
        devices.training_device("cuda")


def test_resume_from_a_truncated_state_is_one_clear_error(smoke_run, tmp_path, capsys):
    run, resume = _private_run(smoke_run, tmp_path)
    state = run / "train_state.pt"
    state.write_bytes(state.read_bytes()[:4096])
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {state}" in err and err.count("\n") == 1


def test_student_init_from_scratch_or_checkpoint(random_checkpoint, tmp_path):
    from tinysam_edge.models import save_checkpoint
    from tinysam_edge.models.training.config import config_from_dict
    from tinysam_edge.models.training.distill import build_models

    torch.manual_seed(1)
    save_checkpoint(build_sam("vit_t"), tmp_path / "other.pth")
    teacher_cfg = {"checkpoint": str(random_checkpoint)}
    teacher, student = build_models(config_from_dict({"teacher": teacher_cfg}), torch.device("cpu"), log=lambda *_: None)
    assert student.training and not teacher.training and teacher.flavour == "tinysam"
    assert all(torch.equal(v, teacher.mask_decoder.state_dict()[k]) for k, v in student.mask_decoder.state_dict().items())
    assert not torch.equal(student.image_encoder.neck[0].weight, teacher.image_encoder.neck[0].weight)
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen and all("mask_downscaling" in n or n.endswith("token_to_image.k_proj.bias") for n in frozen)
    student_cfg = {"init": str(tmp_path / "other.pth")}
    _, warm = build_models(config_from_dict({"teacher": teacher_cfg, "student": student_cfg}), torch.device("cpu"), log=lambda *_: None)
    reference = build_sam("vit_t", checkpoint=tmp_path / "other.pth")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in warm.state_dict().items())
