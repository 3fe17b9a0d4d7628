"""The OpenVINO runtime against the parity-proven torch model: fixture cases, static shapes, model-dir and device errors."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
torch = pytest.importorskip("torch")

from tinysam_edge import Predictor, load_image
from tinysam_edge.devices import shared_core
from tinysam_edge.errors import DeviceError, ModelDirError
from tinysam_edge.manifest import MANIFEST_FILE, Manifest
from tinysam_edge.models import TorchPredictor, build_sam

MAX_MASK_MISMATCH = 3e-3  # fixture README: pixels whose logit sits within float noise of 0


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def dynamic(random_model_dir, image):
    p = Predictor(random_model_dir)
    p.set_image(image)
    return p


@pytest.fixture(scope="module")
def static(random_model_dir, image):
    p = Predictor(random_model_dir, static_shapes=True)
    p.set_image(image)
    return p


def test_parity_fixture_every_case(parity_dir, parity_model_dir):
    ref = np.load(parity_dir / "outputs.npz")
    cases = json.loads((parity_dir / "inputs.json").read_text())["cases"]
    image = load_image(parity_dir / "image.png")
    ov_pred = Predictor(parity_model_dir)
    torch_pred = TorchPredictor(build_sam(checkpoint=parity_dir / "weights.pt"))
    assert (ov_pred.device_used, ov_pred.precision_used) == ("CPU", "f32")
    ov_pred.set_image(image)
    torch_pred.set_image(image)
    np.testing.assert_allclose(ov_pred.get_image_embedding(), torch_pred.get_image_embedding(), rtol=0, atol=1e-3)
    for case in cases:
        i = case["index"]
        kwargs = {
            "point_coords": None if case["point_coords"] is None else np.array(case["point_coords"]),
            "point_labels": None if case["point_labels"] is None else np.array(case["point_labels"]),
            "box": None if case["box"] is None else np.array(case["box"]),
            "mask_input": ref[f"case{i}_mask_input"] if case["mask_input_from"] is not None else None,
        }
        for multimask in (True, False):
            masks, scores, low = ov_pred.predict(**kwargs, multimask_output=multimask)
            t_masks, t_scores, t_low = torch_pred.predict(**kwargs, multimask_output=multimask)
            assert masks.shape == t_masks.shape and masks.dtype == bool and scores.dtype == low.dtype == np.float32
            np.testing.assert_allclose(low, t_low, rtol=0, atol=1e-3)
            np.testing.assert_allclose(scores, t_scores, rtol=0, atol=1e-3)
            assert (masks != t_masks).mean() <= MAX_MASK_MISMATCH
        np.testing.assert_allclose(ov_pred.predict(**kwargs)[2], ref[f"case{i}_low_res_logits"], rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "prompt",
    [
        {"point_coords": [[100, 120]], "point_labels": [1]},
        {"point_coords": [[100, 120], [300, 40]], "point_labels": [1, 0]},
        {"point_coords": [[100, 120], [300, 40], [10, 290], [400, 200], [210, 150]], "point_labels": [1, 0, 1, 0, 1]},
        {"box": [50, 60, 380, 250]},
        {"point_coords": [[100, 120]], "point_labels": [0], "box": [50, 60, 380, 250]},
    ],
    ids=["1 point", "2 points", "5 points", "box", "box + point"],
)
def test_static_slots_match_dynamic(dynamic, static, prompt):
    prompt = {k: np.array(v) for k, v in prompt.items()}
    d_masks, d_scores, d_low = dynamic.predict(**prompt)
    s_masks, s_scores, s_low = static.predict(**prompt)
    np.testing.assert_allclose(s_low, d_low, rtol=0, atol=1e-4)
    np.testing.assert_allclose(s_scores, d_scores, rtol=0, atol=1e-5)
    assert (s_masks != d_masks).mean() <= 1e-4


def test_static_batch_chunks_match_dynamic(dynamic, static):
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, [420, 300], (9, 1, 2))  # 9 prompts: two full chunks of 4 and a padded one
    labels = np.ones((9, 1))
    d_low, d_iou = dynamic.decode_batch(coords, labels)
    s_low, s_iou = static.decode_batch(coords, labels)
    assert d_low.shape == (9, 3, 256, 256) and d_iou.shape == (9, 3)
    np.testing.assert_allclose(s_low, d_low, rtol=0, atol=1e-4)
    np.testing.assert_allclose(s_iou, d_iou, rtol=0, atol=1e-5)
    single = dynamic.predict(coords[4], labels[4])
    np.testing.assert_allclose(d_low[4], single[2], rtol=0, atol=1e-4)


def test_mask_input_and_boxes_batch(dynamic, random_model, image):
    torch_pred = TorchPredictor(random_model)
    torch_pred.set_image(image)
    _, _, low = torch_pred.predict(np.array([[200, 150]]), np.array([1]))
    prompt = {"point_coords": np.array([[200, 150]]), "point_labels": np.array([1]), "mask_input": low[:1]}
    np.testing.assert_allclose(dynamic.predict(**prompt)[2], torch_pred.predict(**prompt)[2], rtol=0, atol=1e-3)
    boxes = np.array([[10, 10, 200, 200], [100, 50, 400, 290]])
    b_low, _ = dynamic.decode_batch(boxes=boxes, multimask_output=False)
    t_low, _ = torch_pred.decode_batch(boxes=boxes, multimask_output=False)
    np.testing.assert_allclose(b_low, t_low, rtol=0, atol=1e-3)


def test_too_many_points_for_static_slots(static):
    coords = np.tile([[10.0, 10.0]], (8, 1))  # 8 points + padding point > 8 slots
    with pytest.raises(ValueError, match="exceed the 8 slots"):
        static.predict(coords, np.ones(8))


def test_precision_is_pinned_and_reported(random_model_dir):
    assert Predictor(random_model_dir).precision_used == "f32"
    assert Predictor(random_model_dir, precision="bf16").precision_used in ("bf16", "f32")  # f32 where the CPU lacks bf16
    with pytest.raises(DeviceError, match="unknown precision"):
        Predictor(random_model_dir, precision="int4")


@pytest.mark.parametrize("device", ["GPU", "NPU", "GPU.1"])
def test_absent_devices_name_what_is_available(random_model_dir, device):
    if device.split(".")[0] in shared_core().available_devices:
        pytest.skip(f"{device} exists on this machine")
    with pytest.raises(DeviceError, match="not available on this machine \\(available: CPU"):
        Predictor(random_model_dir, device=device)


def test_unknown_device(random_model_dir):
    with pytest.raises(DeviceError, match="unknown device 'TPU'"):
        Predictor(random_model_dir, device="TPU")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_model_dirs(random_model_dir, tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        Predictor(tmp_path / "nowhere")
    with pytest.raises(ModelDirError, match="no manifest.json"):
        Predictor(tmp_path)

    missing = _copy(random_model_dir, tmp_path / "missing")
    (missing / "decoder.bin").unlink()
    with pytest.raises(ModelDirError, match="incomplete: missing decoder.bin"):
        Predictor(missing)

    corrupt = _copy(random_model_dir, tmp_path / "corrupt")
    (corrupt / "encoder.xml").write_text("<net><broken")
    with pytest.raises(ModelDirError, match="cannot read .*encoder.xml"):
        Predictor(corrupt)

    future = _copy(random_model_dir, tmp_path / "future")
    data = json.loads((future / MANIFEST_FILE).read_text())
    data["format_version"] = 99
    (future / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="format version 99"):
        Predictor(future)

    garbled = _copy(random_model_dir, tmp_path / "garbled")
    (garbled / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        Predictor(garbled)


@pytest.mark.parametrize(
    ("precision", "quantization", "match"), [("int4", None, "weights_precision 'int4'"), ("int8", None, "inconsistent")]
)
def test_manifest_weights_precision_is_checked(random_model_dir, tmp_path, precision, quantization, match):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    for path in random_model_dir.iterdir():
        (model_dir / path.name).symlink_to(path)
    (model_dir / MANIFEST_FILE).unlink()
    data = json.loads((random_model_dir / MANIFEST_FILE).read_text()) | {"weights_precision": precision, "quantization": quantization}
    (model_dir / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match=match):
        Manifest.read(model_dir)


@pytest.mark.parametrize("options", [{"static_batch": 0}, {"point_slots": 0}, {"point_slots": -1}, {"static_batch": 1025}])
def test_export_refuses_unusable_static_shapes(random_model, random_checkpoint, tmp_path, options):
    from tinysam_edge.quantize.export import export_checkpoint, export_ir

    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        export_ir(random_model, tmp_path / "ir", "random.pth", "0" * 64, log=lambda *_: None, **options)
    with pytest.raises(ValueError, match=name):
        export_checkpoint(random_checkpoint, tmp_path / "ir2", log=lambda *_: None, **options)
    assert list(tmp_path.iterdir()) == []


def test_prompt_shaped_copies_the_decoder_with_static_prompts(random_model_dir):
    from tinysam_edge.decoder_graphs import prompt_shaped

    decoder = shared_core().read_model(random_model_dir / "decoder.xml")
    static = prompt_shaped(decoder, 3, 5, masks=1)
    shapes = {port.get_any_name(): list(port.get_partial_shape().to_shape()) for port in static.inputs}
    assert shapes["point_coords"] == [3, 5, 2] and shapes["point_labels"] == [3, 5] and shapes["mask_input"] == [1, 1, 256, 256]
    assert not decoder.input("point_coords").get_partial_shape().is_static  # the source graph keeps its dynamic shapes
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_shaped(decoder, 0, 5, masks=1)


def test_manifest_records_the_contract(random_model_dir):
    manifest = Manifest.read(random_model_dir)
    data = json.loads((random_model_dir / MANIFEST_FILE).read_text())
    assert manifest.weights_precision == "fp32" and manifest.flavour == "tinysam"
    assert set(data["versions"]) >= {"openvino", "torch", "tinysam_edge"}
    assert set(data["contract"]["decoder_inputs"]) == {"image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"}
    assert manifest.static_shapes["decoder_static"].batch == 1
    decoder = shared_core().read_model(random_model_dir / "decoder_static.xml")
    assert all(port.get_partial_shape().is_static for port in decoder.inputs)


def test_runtime_runs_with_torch_and_nncf_blocked(random_model_dir):
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "nncf"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from tinysam_edge import Predictor
        p = Predictor({str(random_model_dir)!r})
        p.set_image(np.zeros((50, 80, 3), np.uint8))
        masks, scores, low = p.predict(np.array([[40, 25]]), np.array([1]))
        assert masks.shape == (3, 50, 80), masks.shape
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


DROPPED_IN_CREATION_ORDER = """
import gc, os, signal, sys
from tinysam_edge import Predictor
first, second = (Predictor(sys.argv[1], specialized_graphs=0) for _ in range(2))  # no decoder graph: the encoder's plugin is enough
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGTERM, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_signals_still_work_after_predictors_are_dropped_in_creation_order(random_model_dir):
    """With an ``ov.Core`` per predictor, OpenVINO's CPU plugin left the thread on an unmapped signal stack
    and the next signal killed the process with SIGSEGV (docs/robustness.md); predictors share one Core."""
    result = subprocess.run(
        [sys.executable, "-c", DROPPED_IN_CREATION_ORDER, str(random_model_dir)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout == "handled\n", (result.returncode, result.stderr[-2000:])
