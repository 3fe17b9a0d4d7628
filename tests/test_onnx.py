"""``export --format onnx``: segment-anything's ONNX interface, parity with the torch model, the reference wrapper and the official outputs."""

import json
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import REPO
from tinysam_edge.cli import main
from tinysam_edge.errors import TinySamError
from tinysam_edge.models import build_sam
from tinysam_edge.quantize import onnx_check, onnx_export, onnx_graphs
from tinysam_edge.quantize.benchmark.decoder import official_modules
from tinysam_edge.transforms import apply_coords, normalize_and_pad, preprocess, resize_longest_side

ATOL_LOGITS, ATOL_IOU, MAX_MASK_MISMATCH = 2e-3, 1e-3, 3e-3


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fixture(parity_dir):
    ref = np.load(parity_dir / "outputs.npz")
    inputs = json.loads((parity_dir / "inputs.json").read_text())
    return ref, inputs


def reference_export(sam, path, return_single_mask: bool, use_stability_score: bool = False) -> None:
    """segment-anything 1.0's SamOnnxModel holding ``sam``'s decoder weights, exported as its script does."""
    modules = official_modules(sam)
    if modules is None:
        pytest.skip("segment-anything 1.0 is not installed (pip install 'tinysam-edge[bench]')")
    from segment_anything.modeling import Sam as OfficialSam
    from segment_anything.utils.onnx import SamOnnxModel

    encoder = torch.nn.Module()
    encoder.img_size = 1024  # SamOnnxModel reads only the input size from the image encoder
    wrapper = SamOnnxModel(OfficialSam(encoder, *modules), return_single_mask, use_stability_score)
    example = onnx_graphs.decoder_example()
    onnx_graphs.export_graph(wrapper, example, path, onnx_graphs.DECODER_INPUTS, onnx_graphs.DECODER_OUTPUTS, onnx_graphs.DYNAMIC_AXES)


@pytest.fixture(scope="module")
def decoders(parity_dir, tmp_path_factory):
    """Our decoder.onnx (single-mask for both flavours, multimask) and the reference's (single-mask, multimask)."""
    out = tmp_path_factory.mktemp("onnx_decoders")
    paths = {}
    for flavour, single in (("tinysam", True), ("tinysam", False), ("sam", True)):  # the flavour sets only the single mask
        sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt", flavour=flavour)
        paths[flavour, single] = out / f"{flavour}_{single}.onnx"
        onnx_graphs.export_decoder(sam, paths[flavour, single], return_single_mask=single)
    for single in (True, False):
        paths["reference", single] = out / f"reference_{single}.onnx"
        reference_export(sam, paths["reference", single], single)
    return {key: session(path) for key, path in paths.items()} | {"paths": paths, "sam": sam}


def sam_prompt(case: dict, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """SAM's ONNX convention: points, then the box corners (labels 2, 3); without a box a (0, 0) point labelled -1."""
    points = list(case["point_coords"] or [])
    labels = list(case["point_labels"] or [])
    if case["box"] is not None:
        points += [case["box"][:2], case["box"][2:]]
        labels += [2, 3]
    else:
        points.append([0.0, 0.0])
        labels.append(-1)
    coords = apply_coords(np.array(points, np.float64), original_size)[None].astype(np.float32)
    return coords, np.array([labels], np.float32)


def case_feed(ref, inputs: dict, index: int, orig_im_size=None) -> dict:
    case = inputs["cases"][index]
    original_size = tuple(int(v) for v in ref["original_size"])
    coords, labels = sam_prompt(case, original_size)
    has_mask = case["mask_input_from"] is not None
    mask_input = ref[f"case{index}_mask_input"][None] if has_mask else np.zeros((1, 1, 256, 256), np.float32)
    size = original_size if orig_im_size is None else orig_im_size
    values = (ref["image_embeddings"], coords, labels, mask_input, np.array([float(has_mask)], np.float32), np.array(size, np.float32))
    return dict(zip(onnx_graphs.DECODER_INPUTS, values))


def signature(sess) -> tuple:
    """Names, element types and input shapes; outputs by rank (their symbolic dim names are the exporter's)."""
    inputs = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outputs = [(o.name, o.type, len(o.shape)) for o in sess.get_outputs()]
    return inputs, outputs


@pytest.mark.parametrize("single", [True, False])
def test_interface_equals_reference(decoders, single):
    ours, reference = signature(decoders["tinysam", single]), signature(decoders["reference", single])
    assert ours == reference
    assert [i[0] for i in ours[0]] == list(onnx_graphs.DECODER_INPUTS) and [o[0] for o in ours[1]] == list(onnx_graphs.DECODER_OUTPUTS)
    assert ours[0][1][2] == [1, "num_points", 2] and ours[0][2][2] == [1, "num_points"]


@pytest.mark.parametrize("index", range(6))
def test_all_tokens_equal_reference_and_official(decoders, fixture, index):
    """Multimask decoder: all four tokens equal the reference wrapper's; tokens 1..3 and token 0 equal the official outputs."""
    ref, inputs = fixture
    feed = case_feed(ref, inputs, index, orig_im_size=(600, 900))  # the reference's crop is frozen to its example's ratio (2:3)
    ours = decoders["tinysam", False].run(None, feed)
    reference = decoders["reference", False].run(None, feed)
    for got, expected, atol in zip(ours, reference, (ATOL_LOGITS, ATOL_IOU, ATOL_LOGITS)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)

    masks, iou, low_res = decoders["tinysam", False].run(None, case_feed(ref, inputs, index))
    np.testing.assert_allclose(iou[0, 1:], ref[f"case{index}_iou"], rtol=0, atol=ATOL_IOU)
    np.testing.assert_allclose(low_res[0, 1:], ref[f"case{index}_low_res_logits"], rtol=0, atol=ATOL_LOGITS)
    assert masks.shape == (1, 4, *ref["original_size"])
    assert ((masks[0, 1:] > 0) != ref[f"case{index}_masks"]).mean(axis=(1, 2)).max() <= MAX_MASK_MISMATCH
    if f"case{index}_sam_single_iou" in ref:
        np.testing.assert_allclose(low_res[0, :1], ref[f"case{index}_sam_single_low_res_logits"], rtol=0, atol=ATOL_LOGITS)


@pytest.mark.parametrize("index", range(6))
def test_single_mask_follows_tinysam_and_torch(decoders, fixture, index):
    """TinySAM flavour: the single mask is the best IoU of tokens 1..3, as the torch model's outputs pick it."""
    ref, inputs = fixture
    feed = case_feed(ref, inputs, index)
    masks, iou, low_res = decoders["tinysam", True].run(None, feed)
    best = int(ref[f"case{index}_best_index"])
    np.testing.assert_allclose(iou[0], ref[f"case{index}_iou"][best : best + 1], rtol=0, atol=ATOL_IOU)
    np.testing.assert_allclose(low_res[0], ref[f"case{index}_low_res_logits"][best : best + 1], rtol=0, atol=ATOL_LOGITS)
    assert ((masks[0] > 0) != ref[f"case{index}_masks"][best : best + 1]).mean() <= MAX_MASK_MISMATCH

    sam = decoders["sam"]
    args = [torch.from_numpy(feed[k]) for k in ("image_embeddings", "point_coords", "point_labels")]
    with torch.no_grad():
        logits, torch_iou = sam.decode(*args, torch.from_numpy(feed["mask_input"]) if feed["has_mask_input"][0] else None)
    token = onnx_check.single_token(torch_iou[0].numpy(), feed["point_coords"].shape[1], "tinysam")
    np.testing.assert_allclose(low_res[0, 0], logits[0, token].numpy(), rtol=0, atol=ATOL_LOGITS)


@pytest.mark.parametrize("index", range(6))
def test_sam_flavour_single_mask_equals_reference(decoders, fixture, index):
    """SAM flavour (MobileSAM): SAM's point-count rule, output for output the reference's, 2 and 3+ points."""
    ref, inputs = fixture
    feed = case_feed(ref, inputs, index, orig_im_size=(600, 900))
    for got, expected, atol in zip(decoders["sam", True].run(None, feed), decoders["reference", True].run(None, feed), (2e-3, 1e-3, 2e-3)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.mark.slow
def test_stability_score_equals_reference(decoders, fixture, tmp_path):
    """--stability-score: iou_predictions carries SAM's stability score, as the reference's use_stability_score."""
    ref, inputs = fixture
    ours, reference = tmp_path / "ours.onnx", tmp_path / "reference.onnx"
    onnx_graphs.export_decoder(decoders["sam"], ours, return_single_mask=False, use_stability_score=True)
    reference_export(decoders["sam"], reference, return_single_mask=False, use_stability_score=True)
    for index in range(6):
        feed = case_feed(ref, inputs, index, orig_im_size=(600, 900))
        got, expected = session(ours).run(None, feed)[1], session(reference).run(None, feed)[1]
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL_IOU)


def test_masks_follow_any_aspect_ratio(decoders, fixture):
    """The in-graph crop is computed from orig_im_size: portrait and landscape sizes match the runtime's postprocessing."""
    from tinysam_edge.masks import postprocess_masks
    from tinysam_edge.transforms import get_preprocess_shape

    ref, inputs = fixture
    for size in ((800, 534), (300, 1000), (1024, 1024)):
        masks, _, low_res = decoders["tinysam", True].run(None, case_feed(ref, inputs, 0, orig_im_size=size))
        expected = postprocess_masks(low_res[0], get_preprocess_shape(*size), size)
        assert masks.shape == (1, 1, *size)
        np.testing.assert_allclose(masks[0], expected, rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def small_export(parity_dir, tmp_path_factory):
    """``export_onnx`` with --quantize dynamic, on the parity weights with a one-layer stand-in image encoder (a quick smoke run)."""
    sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt")
    torch.manual_seed(0)
    sam.image_encoder = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)
    out = tmp_path_factory.mktemp("onnx_small")
    config = onnx_export.export_onnx(sam, out, {"name": "stand-in", "sha256": "0" * 64}, quantize="dynamic", log=lambda *_: None)
    return out, config


def test_export_writes_config_and_checks_pair(small_export):
    out, config = small_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "decoder.onnx", "decoder_int8.onnx", "encoder.onnx"]
    assert json.loads((out / "config.json").read_text()) == config
    assert config["format"] == "tinysam-edge-onnx" and config["opset"] == onnx_graphs.OPSET and config["flavour"] == "tinysam"
    assert list(config["decoder"]["inputs"]) == list(onnx_graphs.DECODER_INPUTS)
    assert config["decoder"]["dynamic_axes"] == {"point_coords": {"1": "num_points"}, "point_labels": {"1": "num_points"}}
    assert config["decoder"]["return_single_mask"] is True and "tokens 1..3" in config["decoder"]["single_mask"]
    assert config["preprocessing"]["longest_side"] == 1024 and config["preprocessing"]["pixel_std"] == pytest.approx(
        [58.395, 57.12, 57.375]
    )
    checked = config["check"]["max_abs_diff_vs_torch"]
    assert set(checked) == {"encoder", "points", "box", "box_point", "mask_input", "decoder_int8"}
    assert max(checked[c]["low_res_logits"] for c in ("points", "box", "box_point", "mask_input")) <= ATOL_LOGITS
    assert 0.5 < checked["decoder_int8"]["mask_iou"] <= 1.0
    encoder = session(out / "encoder.onnx")
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("input_image", [1, 3, 1024, 1024])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [("image_embeddings", [1, 256, 64, 64])]


def test_encoder_preprocessing_takes_the_resized_image(tmp_path):
    """--encoder-preprocessing: an (H, W, 3) input, H and W dynamic, normalised and padded in the graph as the runtime does on the host."""
    conv = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)  # a stand-in image encoder: the wrapper is under test
    onnx_graphs.export_encoder(types.SimpleNamespace(image_encoder=conv), tmp_path / "encoder.onnx", preprocessing=True)
    encoder = session(tmp_path / "encoder.onnx")
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("input_image", ["image_height", "image_width", 3])]
    for shape in ((480, 640, 3), (900, 300, 3)):
        resized = resize_longest_side(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        got = encoder.run(None, {"input_image": resized.astype(np.float32)})[0]
        with torch.no_grad():
            expected = conv(torch.from_numpy(normalize_and_pad(resized))).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_export_with_encoder_preprocessing_checks_it(parity_dir, tmp_path):
    """The export's check feeds such an encoder the resized image and records it in config.json."""
    sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt")
    sam.image_encoder = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)
    config = onnx_export.export_onnx(
        sam, tmp_path, {"name": "stand-in", "sha256": "0" * 64}, encoder_preprocessing=True, log=lambda *_: None
    )
    assert config["encoder"]["preprocessing_in_graph"] is True
    assert config["encoder"]["dynamic_axes"] == {"input_image": {"0": "image_height", "1": "image_width"}}
    assert config["check"]["max_abs_diff_vs_torch"]["encoder"]["embeddings"] <= 1e-3


def test_check_refuses_a_mismatch(small_export, parity_dir):
    """The export's check fails on a decoder that is not the model's (other flavour's weights moved)."""
    out, _ = small_export
    sam = build_sam("vit_t", checkpoint=parity_dir / "weights.pt")
    torch.manual_seed(0)
    sam.image_encoder = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)
    with torch.no_grad():
        sam.mask_decoder.iou_token.weight.add_(0.1)
    report = onnx_check.agreement(sam, out, "decoder.onnx", return_single_mask=True, use_stability_score=False)
    with pytest.raises(TinySamError, match="ONNX check failed"):
        onnx_check.check_agreement(report)


CHILD = textwrap.dedent(
    """
    import sys
    repo, folder = sys.argv[1:3]
    ours = lambda path: path.startswith(repo) and "site-packages" not in path  # the venv may live inside the repo
    sys.path[:] = [p for p in sys.path if p and not ours(p)]
    import numpy as np
    import onnxruntime as ort

    feeds = np.load("feeds.npz")  # inputs and outputs live in the working folder, the models in folder
    encoder = ort.InferenceSession(folder + "/encoder.onnx", providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(folder + "/decoder.onnx", providers=["CPUExecutionProvider"])
    embedding = encoder.run(None, {"input_image": feeds["input_image"]})[0]
    names = [i.name for i in decoder.get_inputs()]
    outputs = decoder.run(None, {name: embedding if name == "image_embeddings" else feeds[name] for name in names})
    loaded = [m for m, mod in sys.modules.items() if ours(getattr(mod, "__file__", None) or "")]
    assert not loaded and "torch" not in sys.modules and "tinysam_edge" not in sys.modules, loaded
    np.savez("outputs.npz", embedding=embedding, masks=outputs[0], iou=outputs[1], low_res=outputs[2])
    """
)


def run_in_child(folder, feed: dict, tmp_path) -> dict:
    """Run the pair in a fresh interpreter whose sys.path holds no project code, from another folder."""
    np.savez(tmp_path / "feeds.npz", **feed)
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(REPO), str(folder)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return dict(np.load(tmp_path / "outputs.npz"))


def test_pair_runs_without_project_code(small_export, tmp_path):
    out, _ = small_export
    feed = {"input_image": np.zeros((1, 3, 1024, 1024), np.float32), "point_coords": np.array([[[500.0, 400.0], [0.0, 0.0]]], np.float32)}
    feed |= {"point_labels": np.array([[1.0, -1.0]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32)}
    feed |= {"has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([480.0, 640.0], np.float32)}
    got = run_in_child(out, feed, tmp_path)
    assert got["masks"].shape == (1, 1, 480, 640) and got["iou"].shape == (1, 1) and got["low_res"].shape == (1, 1, 256, 256)


def cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr); argparse's exits count as a status."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--format", "onnx", "--fp16"], "--fp16 is ignored with --format onnx"),
        (["--format", "onnx", "--point-slots", "4"], "--point-slots is ignored with --format onnx"),
        (["--format", "onnx", "--trust-pickle"], "--trust-pickle is ignored"),
        (["--quantize", "dynamic"], "--quantize is ignored without --format onnx"),
        (["--multimask"], "--multimask is ignored without --format onnx"),
        (["--format", "onnx", "--quantize", "static"], "invalid choice: 'static'"),
        (["--format", "tflite"], "invalid choice: 'tflite'"),
        (["--format", "onnx", "--checkpoint", "tinysam_w8a8"], "pickled fake-quant PyTorch module"),
        (["--format", "onnx", "--checkpoint", "x.pth", "--model-dir", "md"], "give --checkpoint or --model-dir, not both"),
        (["--format", "onnx", "--model-dir", "missing_model_dir"], "missing_model_dir"),
    ],
)
def test_bad_options_get_one_line(capsys, tmp_path, argv, fragment):
    status, err = cli(capsys, "export", "--out", tmp_path / "out", *argv)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_unwritable_out_gets_one_line(capsys, tmp_path, parity_dir):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep")
    status, err = cli(capsys, "export", "--format", "onnx", "--checkpoint", parity_dir / "weights.pt", "--out", blocker / "out")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err, err
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    status, err = cli(capsys, "export", "--format", "onnx", "--checkpoint", parity_dir / "weights.pt", "--out", notes, "--overwrite")
    assert status == 2 and "notes.txt" in err and (notes / "notes.txt").read_text() == "mine", err
    assert blocker.read_text() == "keep"


@pytest.fixture(scope="module")
def cli_export(parity_dir, tmp_path_factory):
    """The parity weights exported through the CLI (encoder and all), with the INT8 decoder."""
    out = tmp_path_factory.mktemp("onnx_cli") / "onnx"
    argv = ["export", "--format", "onnx", "--checkpoint", parity_dir / "weights.pt", "--out", out, "--quantize", "dynamic"]
    assert main([str(a) for a in argv]) == 0
    return out


@pytest.mark.slow
def test_cli_export_matches_official_outputs_end_to_end(cli_export, fixture, parity_dir, tmp_path):
    """encoder.onnx + decoder.onnx from the CLI, run with no project code, give the official embeddings and masks."""
    from tinysam_edge import load_image

    ref, inputs = fixture
    tensor, _ = preprocess(load_image(parity_dir / "image.png"))
    feed = {k: v for k, v in case_feed(ref, inputs, 3).items() if k != "image_embeddings"} | {"input_image": tensor}
    got = run_in_child(cli_export, feed, tmp_path)
    np.testing.assert_allclose(got["embedding"], ref["image_embeddings"], rtol=0, atol=1e-3)
    best = int(ref["case3_best_index"])
    np.testing.assert_allclose(got["low_res"][0], ref["case3_low_res_logits"][best : best + 1], rtol=0, atol=ATOL_LOGITS)
    assert ((got["masks"][0] > 0) != ref["case3_masks"][best : best + 1]).mean() <= MAX_MASK_MISMATCH
    config = json.loads((cli_export / "config.json").read_text())
    assert config["files"] == {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "decoder_int8": "decoder_int8.onnx"}
    assert config["source"]["name"] == "weights.pt" and config["check"]["max_abs_diff_vs_torch"]["encoder"]["embeddings"] <= 1e-3


@pytest.mark.slow
def test_cli_overwrite_replaces_only_its_export(cli_export, capsys, parity_dir):
    status, err = cli(capsys, "export", "--format", "onnx", "--checkpoint", parity_dir / "weights.pt", "--out", cli_export)
    assert status == 2 and "--overwrite" in err
    status, err = cli(capsys, "export", "--format", "onnx", "--checkpoint", parity_dir / "weights.pt", "--out", cli_export, "--overwrite")
    assert status == 0, err
    assert sorted(p.name for p in cli_export.iterdir()) == ["config.json", "decoder.onnx", "encoder.onnx"]
