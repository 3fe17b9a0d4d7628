"""Everything-mode settings in one place: one set of defaults and limits behind the API, the CLI, the service
and label; one factory choosing the generator; generating on the image a predictor already holds."""

import dataclasses

import numpy as np
import pytest

from tinysam_edge import amg
from tinysam_edge.cli import build_parser
from tinysam_edge.cli.options import everything_settings
from tinysam_edge.errors import TinySamError
from tinysam_edge.everything_settings import LIMITS, MAX_POINTS_PER_SIDE, USER_FIELDS, EverythingSettings

# one refused value per limit, and the message fragment the settings give for it
REFUSED = [
    ({"points_per_side": MAX_POINTS_PER_SIDE + 1}, f"points_per_side must be an integer in 1..{MAX_POINTS_PER_SIDE}"),
    ({"points_per_side": 0}, "points_per_side must be an integer"),
    ({"points_per_side": 8.0}, "points_per_side must be an integer"),
    ({"points_per_batch": LIMITS["points_per_batch"][2] + 1}, "points_per_batch must be an integer"),
    ({"points_per_batch": True}, "points_per_batch must be an integer"),
    ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh must be a finite number"),
    ({"pred_iou_thresh": "high"}, "pred_iou_thresh must be a finite number"),
    ({"pred_iou_thresh": 10**400}, "pred_iou_thresh must be a finite number"),  # beyond the float range
    ({"stability_score_thresh": 1.5}, "stability_score_thresh must be a number in 0.0..1.0"),
    ({"box_nms_thresh": -0.1}, "box_nms_thresh must be a number in 0.0..1.0"),
    ({"min_mask_region_area": -1}, "min_mask_region_area must be an integer"),
    ({"mode": "crops"}, "mode must be one of 'hierarchical', 'grid'"),
    ({"points_per_side": 3}, "mode hierarchical needs points_per_side >= 4"),
]


@pytest.mark.parametrize("fields, message", REFUSED)
def test_settings_refuse_out_of_range_values(fields, message):
    with pytest.raises(ValueError, match=message):
        EverythingSettings(**fields)


def test_settings_defaults_are_sams_and_tinysams():
    settings = EverythingSettings()
    assert (settings.mode, settings.points_per_side, settings.points_per_batch) == ("hierarchical", 32, 64)
    assert (settings.pred_iou_thresh, settings.stability_score_thresh, settings.high_score_thresh) == (0.88, 0.95, 8.5)
    assert (settings.box_nms_thresh, settings.min_mask_region_area, settings.stability_score_offset) == (0.7, 0, 1.0)
    assert EverythingSettings(mode="grid", points_per_side=1).points_per_side == 1  # the grid has no hierarchical minimum
    assert EverythingSettings(**EverythingSettings(pred_iou_thresh=0).as_dict()) == EverythingSettings(pred_iou_thresh=0.0)


def _everything_args(*extra: str):
    return build_parser().parse_args(["everything", "photo.png", "--out", "out", *extra])


def _label_args(*extra: str):
    return build_parser().parse_args(["label", "images", "--everything", "--out", "out", *extra])


@pytest.mark.parametrize("parse", [_everything_args, _label_args])
def test_cli_defaults_and_limits_are_the_settings(parse):
    assert everything_settings(parse()) == EverythingSettings()
    top = str(MAX_POINTS_PER_SIDE)
    assert everything_settings(parse("--mode", "grid", "--points-per-side", top)) == EverythingSettings(
        mode="grid", points_per_side=MAX_POINTS_PER_SIDE
    )
    for name, (_, low, high) in LIMITS.items():
        option = f"--{name.replace('_', '-')}"
        if name not in USER_FIELDS or high is None:
            continue
        with pytest.raises(SystemExit):
            parse(option, str(high + (1 if isinstance(high, int) else 0.5)))
        assert getattr(everything_settings(parse("--mode", "grid", option, str(low))), name) == low
    with pytest.raises(TinySamError, match="--mode hierarchical needs --points-per-side >= 4"):
        everything_settings(parse("--points-per-side", "3"))
    with pytest.raises(TinySamError, match="--high-score-thresh is ignored by --mode grid"):
        everything_settings(parse("--mode", "grid", "--high-score-thresh", "3"))


def test_service_takes_the_settings_defaults_and_refuses_what_they_refuse():
    pytest.importorskip("fastapi")
    from tinysam_edge.serve.errors import ApiError
    from tinysam_edge.serve.schema import parse_everything

    assert parse_everything({}) == EverythingSettings(output_mode="coco_rle")
    top = {"mode": "grid", "points_per_side": MAX_POINTS_PER_SIDE, "pred_iou_thresh": 0}
    assert parse_everything(top) == EverythingSettings(output_mode="coco_rle", **top)
    for fields, message in REFUSED:
        with pytest.raises(ApiError, match=message) as refused:
            parse_everything(fields)
        assert refused.value.status == 422
    with pytest.raises(ApiError, match="unknown field"):
        parse_everything({"output_mode": "binary_mask"})  # the service always answers COCO RLE


def test_one_stability_score():
    logits = np.full((3, 4, 5), -5.0, np.float32)
    logits[0, :2] = 5.0  # 10 pixels, all far from the threshold: stable
    logits[1, :2], logits[1, 2:] = 5.0, 0.5  # 10 above +1, 20 above -1
    assert amg.stability_score(logits, 1.0).tolist() == [1.0, 0.5, 0.0]  # nothing above -1: 0, not NaN
    from tinysam_edge import mask_generator
    from tinysam_edge.label import annotate

    assert mask_generator.stability_score is amg.stability_score and annotate.stability_score is amg.stability_score
    assert not hasattr(annotate, "stability_scores") and not hasattr(mask_generator.MaskGenerator, "_stability")


# --- with a model -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(random_model_dir):
    from tinysam_edge import Predictor

    return Predictor(random_model_dir)


def _image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def test_factory_chooses_the_generator_from_the_settings(predictor):
    from tinysam_edge import HierarchicalMaskGenerator, MaskGenerator, make_generator

    assert type(make_generator(predictor)) is HierarchicalMaskGenerator
    grid = EverythingSettings(mode="grid", points_per_side=8)
    generator = make_generator(predictor, grid, progress=True)
    assert type(generator) is MaskGenerator and generator.settings == grid and generator.progress
    assert type(make_generator(predictor, dataclasses.replace(grid, mode="hierarchical"))) is HierarchicalMaskGenerator
    assert MaskGenerator(predictor, points_per_side=8).settings == grid  # keywords replace fields of the defaults
    with pytest.raises(ValueError, match="use make_generator"):
        MaskGenerator(predictor, EverythingSettings())


@pytest.mark.parametrize("mode", ["grid", "hierarchical"])
def test_generate_on_the_current_image_equals_generate_from_the_image(predictor, mode):
    from tinysam_edge import make_generator

    settings = EverythingSettings(mode=mode, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
    image = _image()
    expected = make_generator(predictor, settings).generate(image)
    predictor.set_image(image)
    generator = make_generator(predictor, settings)
    got = generator.generate()
    assert generator.stats["seconds"]["encoder"] == 0.0 and len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert np.array_equal(g["segmentation"], e["segmentation"]) and g["predicted_iou"] == e["predicted_iou"]
        assert g["point_coords"] == e["point_coords"] and g["stability_score"] == e["stability_score"]
    predictor.reset_image()
    with pytest.raises(ValueError, match="predictor.set_image first"):
        generator.generate()


def test_service_job_runs_the_factory_on_the_snapshot(predictor):
    pytest.importorskip("pycocotools")
    from tinysam_edge import make_generator
    from tinysam_edge.serve import jobs

    settings = EverythingSettings(mode="grid", points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, output_mode="coco_rle")
    image = _image()
    expected = make_generator(predictor, settings).generate(image)
    snapshot = predictor.get_image_state()
    predictor.set_image(image[::-1].copy())  # another image in between: the snapshot's is the one used
    records, _, seconds = jobs.everything(predictor, snapshot, settings)
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in expected] and seconds["encoder"] == 0.0


@pytest.mark.parametrize("mode", ["grid", "hierarchical"])
def test_label_builds_its_generator_from_the_cli_settings(random_model_dir, mode):
    from tinysam_edge.cli.label import _task
    from tinysam_edge.label.annotate import Labeller, Task
    from tinysam_edge.mask_generator import make_generator

    task, _, _, job_settings = _task(_label_args("--mode", mode, "--points-per-side", "8"), None)
    assert task.everything == EverythingSettings(mode=mode, points_per_side=8) and job_settings["prompt"] == task.everything.as_dict()
    assert Task(**dataclasses.asdict(task)) == task  # as Ray ships it
    labeller = Labeller(random_model_dir, task)
    assert type(labeller.generator) is type(make_generator(labeller.predictor, task.everything))
    assert labeller.generator.settings == task.everything
