"""Hostile input: a one-line error and exit 2, never a traceback, a core dump, a changed input or a temp file left.

The table runs every subcommand in-process (each case fails before a model is loaded); the Python API
is fuzzed through a backend that fails on any tensor the OpenVINO graphs could not take; a few cases
run a real process, for what a signal or a native crash would do. docs/robustness.md lists what each
hostile input gets.
"""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinysam_edge import HierarchicalMaskGenerator, MaskGenerator, Predictor
from tinysam_edge.cli import main
from tinysam_edge.devices import compile_config, shared_core
from tinysam_edge.errors import ModelDirError
from tinysam_edge.files import atomic_write
from tinysam_edge.manifest import FORMAT, FORMAT_VERSION
from tinysam_edge.predictor import PredictorBase

REPO = Path(__file__).resolve().parents[1]
STATIC = {"decoder_static": {"batch": 1, "points": 8}, "decoder_static_batch": {"batch": 4, "points": 8}}
MANIFEST = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "model": "vit_t",
    "flavour": "tinysam",
    "weights_precision": "fp32",
    "quantization": None,
    "source": {"name": "w.pth", "sha256": "0" * 64},
    "versions": {},
    "files": {
        "encoder": "encoder.xml",
        "decoder": "decoder.xml",
        "decoder_static": "decoder_static.xml",
        "decoder_static_batch": "decoder_static_batch.xml",
    },
    "static_shapes": STATIC,
}


def _png_bomb() -> bytes:
    """A PNG header claiming 100000 x 100000 pixels (10 GB decoded) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _fake_model_dir(path: Path, manifest: dict | bytes) -> None:
    """A model dir whose IR files exist but are empty (enough for every check that comes before reading them)."""
    path.mkdir()
    for name in MANIFEST["files"].values():
        (path / name).write_bytes(b"")
        (path / name).with_suffix(".bin").write_bytes(b"")
    (path / "manifest.json").write_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())


def _truncated_ir_model_dir(path: Path) -> None:
    """A model dir whose encoder is a real IR with its weights file cut short."""
    import openvino as ov
    import openvino.opset13 as ops

    _fake_model_dir(path, MANIFEST)
    x = ops.parameter([1, 64], np.float32, name="x")
    ov.save_model(
        ov.Model([ops.add(x, ops.constant(np.arange(64, dtype=np.float32)[None]))], [x]), path / "encoder.xml", compress_to_fp16=False
    )
    with open(path / "encoder.bin", "r+b") as f:
        f.truncate(100)


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*") if not p.is_symlink()]


@pytest.fixture
def world(tmp_path: Path):
    """Inputs a user (or an attacker) hands the CLI; afterwards every input is byte-identical and no temp file or hidden dir is left."""
    w = tmp_path / "w"
    w.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(w / "photo.png"), photo)
    shutil.copy(w / "photo.png", w / "фото_é.png")
    (w / "calib").mkdir()
    shutil.copy(w / "photo.png", w / "calib" / "a.png")
    (w / "empty_dir").mkdir()
    (w / "dir.png").mkdir()
    (w / "dir.json").mkdir()
    (w / "empty.png").write_bytes(b"")
    (w / "text.png").write_text("not an image\n")
    (w / "bomb.png").write_bytes(_png_bomb())
    (w / "afile").write_text("a regular file\n")
    (w / "weights.pth").write_bytes(b"\x80\x02 not really a checkpoint")
    (w / "empty.pth").write_bytes(b"")
    (w / "ann.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (w / "list.json").write_text("[]")
    (w / "latin1.json").write_bytes(b'{"caf\xe9": 1}')
    (w / "loop.png").symlink_to(w / "loop.png")
    (w / "link.png").symlink_to(w / "photo.png")
    os.link(w / "photo.png", w / "hard.png")
    _fake_model_dir(w / "md", MANIFEST)
    _fake_model_dir(w / "md_batch0", {**MANIFEST, "static_shapes": {**STATIC, "decoder_static_batch": {"batch": 0, "points": 8}}})
    _fake_model_dir(w / "md_slots0", {**MANIFEST, "static_shapes": {**STATIC, "decoder_static": {"batch": 1, "points": 0}}})
    _fake_model_dir(w / "md_latin1", b'{"format": "caf\xe9"}')
    _fake_model_dir(w / "md_shapes_list", {**MANIFEST, "static_shapes": []})
    _fake_model_dir(w / "md_escape", {**MANIFEST, "files": {**MANIFEST["files"], "encoder": "../md/encoder.xml"}})
    _fake_model_dir(w / "md_flavour", {**MANIFEST, "flavour": "bogus"})
    _truncated_ir_model_dir(w / "md_truncated")
    before = _snapshot(w)
    yield w
    assert _snapshot(w) == before, "an input file changed"
    assert not _leftovers(tmp_path), "temp files or hidden folders were left"


def run(capsys, argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, f"status {status}: {stderr}"
    assert fragment in lines[0], lines[0]


SEG = "segment {w}/photo.png --model-dir {w}/md --out {w}/out.png"
EV = "everything {w}/photo.png --model-dir {w}/md --out {w}/ev"
EXP = "export --checkpoint {w}/weights.pth --out {w}/exported"
QU = "quantize --model-dir {w}/md --calib {w}/calib --out {w}/int8"
CMP = "compare --reference {w}/md --candidate {w}/md --images {w}/calib --out {w}/cmp.json"
BEN = "bench --model-dir {w}/md --out-dir {w}/bench"
EVAL = "eval coco --images {w}/calib --annotations {w}/ann.json --detections {w}/list.json --model-dir {w}/md --out {w}/coco.json"
TEACH = "train cache-teacher --teacher {w}/weights.pth --images {w}/calib --out {w}/cache"

#: (arguments, a fragment of the one-line error). ``{w}`` is the folder of the ``world`` fixture.
CASES = [
    ("", "required"),
    ("frobnicate", "invalid choice"),
    ("weights", "required"),
    ("weights fetch nope", "invalid choice"),
    # segment: prompts
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/out.png", "at least one --point"),
    (SEG + " --point 1,2,3,4", "X,Y[,LABEL]"),
    (SEG + " --point nan,5", "finite"),
    (SEG + " --point 1e999,5", "finite"),
    (SEG + " --point 5,5,2", "label must be 1"),
    (SEG + " --point -1,5", "outside the 80x60 image"),
    (SEG + " --point 80.5,5", "outside"),
    (SEG + " --point ,", "X,Y[,LABEL]"),
    (SEG + " --box 1,1,5,5 --box 1,1,6,6", "given twice"),
    (SEG + " --box 1,2,3", "X0,Y0,X1,Y1"),
    (SEG + " --box 9,9,1,1", "x0 <= x1"),
    # segment: images
    ("segment {w}/dir.png --model-dir {w}/md --out {w}/out.png --point 1,1", "is not a file"),
    ("segment /dev/zero --model-dir {w}/md --out {w}/out.png --point 1,1", "is not a file"),
    ("segment {w}/missing.png --model-dir {w}/md --out {w}/out.png --point 1,1", "not found"),
    ("segment {w}/empty.png --model-dir {w}/md --out {w}/out.png --point 1,1", "cannot decode"),
    ("segment {w}/text.png --model-dir {w}/md --out {w}/out.png --point 1,1", "cannot decode"),
    ("segment {w}/bomb.png --model-dir {w}/md --out {w}/out.png --point 1,1", "OpenCV refuses"),
    ("segment {w}/loop.png --model-dir {w}/md --out {w}/out.png --point 1,1", "symlink loop"),
    ("segment {w}/фото_é.png --model-dir {w}/missing --out {w}/out.png --point 1,1", "does not exist"),
    # segment: outputs
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/photo.png --overwrite --point 1,1", "refusing to overwrite an input"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/link.png --overwrite --point 1,1", "refusing to overwrite an input"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/hard.png --overwrite --point 1,1", "refusing to overwrite an input"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/loop.png --point 1,1", "symlink loop"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/out.gif --point 1,1", "unsupported output type"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/dir.png --point 1,1", "is a folder"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/afile/out.png --point 1,1", "is not a folder"),
    ("segment {w}/photo.png --model-dir {w}/md --out {w}/" + "x" * 252 + ".png --point 1,1", "File name too long"),
    (
        "segment {w}/photo.png --model-dir {w}/md --out {w}/" + "x" * 248 + ".png --point 1,1",
        "cannot write",
    ),  # only its temp name is too long
    (SEG + " --point 1,1 --mask-out {w}/afile/mask.png", "is not a folder"),
    (SEG + " --point 1,1 --mask-out {w}/out.png", "same file"),
    (SEG + " --point 1,1 --mask-out {w}/loop.png", "symlink loop"),
    (SEG + " --point 1,1 --mask-out {w}/mask.jpg", "unsupported output type"),
    # segment: models and devices
    ("segment {w}/photo.png --model-dir {w} --out {w}/out.png --point 1,1", "no manifest.json"),
    (SEG + " --point 1,1 --flavour sam", "--flavour applies to --checkpoint"),
    (SEG + " --point 1,1 --checkpoint {w}/weights.pth", "not both"),
    (SEG + " --point 1,1 --backend torch", "OpenVINO model"),
    ("segment {w}/photo.png --out {w}/out.png --point 1,1 --backend torch --device GPU", "--backend torch runs f32"),
    (SEG + " --point 1,1 --device XPU", "unknown device"),
    (SEG + " --point 1,1 --device GPU.7", "not available"),
    (SEG + " --point 1,1 --device ''", "unknown device"),
    (SEG + " --point 1,1 --precision f64", "invalid choice"),
    ("segment {w}/photo.png --model-dir {w}/md_batch0 --out {w}/out.png --point 1,1 --device AUTO", "point slots"),
    ("segment {w}/photo.png --model-dir {w}/md_slots0 --out {w}/out.png --point 1,1", "point slots"),
    ("segment {w}/photo.png --model-dir {w}/md_latin1 --out {w}/out.png --point 1,1", "malformed"),
    ("segment {w}/photo.png --model-dir {w}/md_shapes_list --out {w}/out.png --point 1,1", "malformed"),
    ("segment {w}/photo.png --model-dir {w}/md_escape --out {w}/out.png --point 1,1", "outside the model dir"),
    ("segment {w}/photo.png --model-dir {w}/md_flavour --out {w}/out.png --point 1,1", "flavour 'bogus'"),
    ("segment {w}/photo.png --model-dir {w}/md_truncated --out {w}/out.png --point 1,1", "Incorrect weights in bin file!"),
    # demo
    ("demo {w}/photo.png --model-dir {w}/md --out-dir {w}/afile", "is a file, not a folder"),
    ("demo {w}/photo.png --model-dir {w}/md --out-dir {w}/afile/sub", "is not a folder"),
    ("demo {w}/missing.png --model-dir {w}/md --out-dir {w}/demo", "not found"),
    # everything
    (EV + " --points-per-side 0", "must be in 1..64"),
    (EV + " --points-per-side 65", "must be in 1..64"),
    (EV + " --points-per-side -1", "must be in 1..64"),
    (EV + " --points-per-side nan", "expected an integer"),
    (EV + " --points-per-side 2", "needs --points-per-side >= 4"),
    (EV + " --points-per-batch 0", "must be in 1.."),
    (EV + " --points-per-batch 99999999999999999999", "must be in 1..256"),
    (EV + " --box-nms-thresh 1.5", "must be in 0.0..1.0"),
    (EV + " --stability-score-thresh nan", "must be in 0.0..1.0"),
    (EV + " --pred-iou-thresh inf", "must be in -inf..inf"),
    (EV + " --min-mask-region-area -1", "must be in 0.."),
    (EV + " --mode grid --high-score-thresh 3", "ignored by --mode grid"),
    ("everything {w}/photo.png --model-dir {w}/md --out {w}/photo.png", "is or holds the input"),
    ("everything {w}/photo.png --model-dir {w}/md --out {w}/afile", "is a file, not a folder"),
    # export
    (EXP + " --point-slots 0", "must be in 1..64"),
    (EXP + " --point-slots -1", "must be in 1..64"),
    (EXP + " --point-slots 65", "must be in 1..64"),
    (EXP + " --static-batch 0", "must be in 1..1024"),
    (EXP + " --static-batch 1025", "must be in 1..1024"),
    ("export --checkpoint {w}/weights.pth --out {w} --overwrite", "is or holds the input"),
    ("export --checkpoint {w}/weights.pth --out {w}/weights.pth --overwrite", "is or holds the input"),
    ("export --checkpoint {w}/weights.pth --out {w}/afile", "is a file, not a folder"),
    ("export --checkpoint {w}/weights.pth --out {w}/afile/model", "is not a folder"),
    # quantize
    (QU + " --subset-size 0", "must be in 1.."),
    (QU + " --max-drop -1", "must be in 0.0..1.0"),
    (QU + " --max-drop 2", "must be in 0.0..1.0"),
    (QU + " --max-drop nan", "must be in 0.0..1.0"),
    (QU + " --held-out 0", "must be in 1.."),
    (QU + " --held-out 3", "ignored without --max-drop"),
    (QU + " --max-iterations 2", "ignored without --max-drop"),
    (QU + " --max-drop 0.01 --held-out 5", "leaves no calibration image"),
    ("quantize --model-dir {w}/md --calib {w}/calib --out {w}/md --overwrite", "is or holds the input"),
    ("quantize --model-dir {w}/md --calib {w}/calib --out {w}/calib --overwrite", "is or holds the input"),
    ("quantize --model-dir {w}/md --calib {w}/calib --out {w} --overwrite", "is or holds the input"),
    ("quantize --model-dir {w}/md --calib {w}/empty_dir --out {w}/int8", "no images found"),
    # compare
    (CMP + " --limit 0", "must be in 1.."),
    (CMP + " --limit -1", "must be in 1.."),
    (CMP + " --objects-per-image 0", "must be in 1.."),
    (CMP + " --pred-iou-thresh 0.5", "ignored without --everything"),
    (CMP + " --box-nms-thresh 0.5", "ignored without --everything"),
    (
        "compare --reference {w}/md --candidate {w}/md --images {w}/calib --annotations {w}/ann.json --out {w}/ann.json --overwrite",
        "refusing to overwrite",
    ),
    ("compare --reference {w}/md --candidate {w}/md --images {w}/calib --out {w}/dir.json", "is a folder"),
    ("compare --reference {w}/missing --candidate {w}/md --images {w}/calib --out {w}/cmp.json", "does not exist"),
    # bench
    (BEN + " --rounds 0", "must be in 1.."),
    (BEN + " --seconds 0", "must be in 1.."),
    (BEN + " --quick --seconds 3", "--seconds is ignored"),
    (BEN + " --everything {w}/photo.png --decoder {w}/photo.png", "not both"),
    (BEN + " --points-per-batch 8", "ignored without --everything"),
    (BEN + " --quick --everything {w}/photo.png", "--quick is ignored"),
    (BEN + " --precision f64", "invalid choice"),
    (BEN + " --int8-dir {w}/missing", "does not exist"),
    (BEN + " --int8-dir {w}/md_latin1", "malformed"),
    ("bench --model-dir {w}/md --out-dir {w}/afile", "is a file, not a folder"),
    # the --limit family: one range, one message, in every command
    (EVAL + " --limit 0", "must be in 1.."),
    (EVAL + " --limit -3", "must be in 1.."),
    ("webcam --headless --max-frames 0", "must be in 1.."),
    # train
    ("train", "required"),
    (TEACH + " --device XPU", "expected a torch device"),
    ("train cache-teacher --teacher {w}/weights.pth --images {w}/calib --out {w}/calib", "is or holds the input"),
    ("train cache-teacher --teacher {w}/weights.pth --images {w}/calib --out {w}/afile", "is a file, not a folder"),
]


@pytest.mark.parametrize("template, fragment", CASES, ids=[c[0].replace("{w}/", "")[:70] for c in CASES])
def test_hostile_arguments(world, capsys, template, fragment):
    argv = [arg.format(w=world).strip("'") for arg in template.split()]
    status, stderr = run(capsys, argv)
    assert_one_line_error(status, stderr, fragment)


#: Cases that reach the torch side (checkpoint loading, training configs).
TORCH_CASES = [
    ("export --checkpoint {w}/empty.pth --out {w}/exported", "empty.pth"),
    ("export --checkpoint {w}/text.png --out {w}/exported", "text.png"),
    ("segment {w}/photo.png --backend torch --checkpoint {w}/empty.pth --out {w}/out.png --point 1,1", "empty.pth"),
    ("train distill --config {w}/missing.toml", "not found"),
    ("train distill --config {w}/latin1.json", "latin1.json"),
    ("train distill --config {w}/afile", "afile"),
    ("train distill --config {repo}/configs/distill_smoke.toml --set optim.max_steps=-5", "max_steps must be >= 0"),
]


@pytest.mark.parametrize("template, fragment", TORCH_CASES, ids=[c[0].replace("{w}/", "")[:70] for c in TORCH_CASES])
def test_hostile_torch_side(world, capsys, template, fragment):
    pytest.importorskip("torch")
    status, stderr = run(capsys, [arg.format(w=world, repo=REPO) for arg in template.split()])
    assert_one_line_error(status, stderr, fragment)


# --- the Python API: degenerate shapes never reach a backend ---------------------------------------------------------------


def _assert_graph_inputs(coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
    """What the decoder IRs take: (B>=1, N>=1, 2) finite float32 coords, (B, N) labels of the contract, one mask (1, 1, 256, 256)."""
    assert coords.ndim == 3 and coords.shape[0] >= 1 and coords.shape[1] >= 1 and coords.shape[2] == 2, coords.shape
    assert labels.shape == coords.shape[:2] and coords.dtype == labels.dtype == np.float32
    assert np.isfinite(coords).all() and np.isin(labels, [-2, -1, 0, 1, 2, 3]).all()  # -2: the empty slot of a mask-only prompt
    assert mask is None or mask.shape == (1, 1, 256, 256) and np.isfinite(mask).all()


class Recorder(PredictorBase):
    """A backend that fails the test if it is handed a tensor the OpenVINO graphs could not take."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        super().__init__("tinysam")

    def _encode(self, input_tensor: np.ndarray) -> np.ndarray:
        assert input_tensor.shape == (1, 3, 1024, 1024) and input_tensor.dtype == np.float32
        return np.zeros((1, 256, 64, 64), np.float32)

    def _decode(self, embedding, coords, labels, mask_input):
        _assert_graph_inputs(coords, labels, mask_input)
        b = coords.shape[0]
        return self.rng.normal(0, 4, (b, 4, 256, 256)).astype(np.float32), self.rng.random((b, 4)).astype(np.float32)

    def _image_state(self, embedding: np.ndarray) -> str:
        return "state"

    def _decode_cached(self, state, coords, labels, exact_shape=True):
        return self._decode(None, coords, labels, None)

    def _score_cached(self, state, coords, labels):
        return self._decode(None, coords, labels, None)[1]


JUNK_ELEMENTS = st.one_of(st.floats(-2, 40), st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 1.0, 2.0, 1e300]))
JUNK = st.one_of(
    st.none(),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), elements=JUNK_ELEMENTS),
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3), elements=st.integers(-2, 3)),
    st.sampled_from([[], [[]], "ab", [["a", "b"]], [[1, 2]], [1, 2, 30, 20], {"x": 1}, object()]),
)


LABEL_VALUES = st.sampled_from([-1.0, 0.0, 1.0])


@st.composite
def prompt_sets(draw: st.DrawFn, batched: bool) -> tuple:
    """(coords, labels, boxes) of consistent shapes with B, N in 0..3 and in-image values; each part may be dropped or junk."""
    b, n = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    lead = (b, n) if batched else (n,)
    corners = draw(hnp.arrays(np.float64, (b, 4) if batched else (4,), elements=st.floats(0, 30)))
    boxes = np.concatenate([np.minimum(corners[..., :2], corners[..., 2:]), np.maximum(corners[..., :2], corners[..., 2:])], axis=-1)
    parts = [
        draw(hnp.arrays(np.float64, (*lead, 2), elements=st.floats(0, 30))),
        draw(hnp.arrays(np.float64, lead, elements=LABEL_VALUES)),
        boxes,
    ]
    for i, fate in enumerate(draw(st.lists(st.sampled_from(["keep", "keep", "drop", "junk"]), min_size=3, max_size=3))):
        parts[i] = {"keep": parts[i], "drop": None}.get(fate) if fate != "junk" else draw(JUNK)
    return tuple(parts)


MASK_SHAPES = st.sampled_from([(1, 256, 256), (256, 256), (0, 256, 256), (2, 256, 256), (1, 0, 0)])
MASKS = st.one_of(
    JUNK,
    hnp.arrays(np.float32, MASK_SHAPES, elements=st.sampled_from([np.nan, -np.inf, 0.5]), fill=st.just(0.0)),
    hnp.arrays(np.float64, MASK_SHAPES, elements=st.sampled_from([np.nan, 1e300, 0.5]), fill=st.just(0.0)),  # 1e300: inf as float32
)
ROWS = st.one_of(JUNK, hnp.arrays(np.int64, st.integers(0, 4), elements=st.integers(-1, 4)))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    predictor = Recorder()
    predictor.set_image(np.zeros((30, 40, 3), np.uint8))
    return predictor


@FUZZ
@given(prompts=prompt_sets(batched=False), mask=st.one_of(st.none(), MASKS), multimask=st.booleans())
def test_fuzz_predict(recorder, prompts, mask, multimask):
    coords, labels, box = prompts
    try:
        masks, scores, low_res = recorder.predict(coords, labels, box, mask, multimask_output=multimask)
    except ValueError:
        return
    count = 3 if multimask else 1
    assert masks.shape == (count, 30, 40) and scores.shape == (count,) and low_res.shape == (count, 256, 256)


@FUZZ
@given(prompts=prompt_sets(batched=True), rows=ROWS, upscale=MASKS)
def test_fuzz_batches_and_upscale(recorder, prompts, rows, upscale):
    coords, labels, boxes = prompts
    for call in (recorder.decode_batch, recorder.decode_batch_scores):
        try:
            out = call(coords, labels, boxes)
        except ValueError:
            continue
        b = out[0].shape[0] if isinstance(out, tuple) else out.shape[0]
        assert b >= 1
    if recorder._scored is not None:
        try:
            low_res, scores = recorder.decode_batch_masks(rows)
            assert low_res.shape[1:] == (3, 256, 256) and len(low_res) == len(scores)
        except (ValueError, TypeError):
            pass
    try:
        assert recorder.upscale(upscale).shape[1:] == (30, 40)
    except ValueError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(
        ["points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area"]
    ),
    value=st.one_of(st.integers(-10, 10**7), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=2)),
)
def test_fuzz_generator_options(name, value):
    try:
        MaskGenerator(Recorder(), **{name: value})
    except ValueError:
        return
    assert value is not None and not isinstance(value, (bool, str))


@pytest.mark.parametrize("cls", [MaskGenerator, HierarchicalMaskGenerator])
@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (5, 5)])
def test_generators_on_degenerate_images(cls, shape):
    generator = cls(Recorder(), points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    for record in generator.generate(np.zeros((*shape, 3), np.uint8)):
        assert record["segmentation"].shape == shape
    with pytest.raises(ValueError, match="empty"):
        generator.generate(np.zeros((0, 5, 3), np.uint8))


# --- real backends, model dirs and processes -----------------------------------------------------------------------------

DEGENERATE = [
    ("predict", {"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "N >= 1"),
    ("predict", {"mask_input": np.zeros((0, 256, 256))}, "mask_input"),
    ("predict", {"mask_input": np.full((1, 256, 256), 1e300)}, "NaN or infinite"),
    ("decode_batch", {"point_coords": np.zeros((0, 1, 2)), "point_labels": np.zeros((0, 1))}, "B >= 1"),
    ("decode_batch", {"boxes": np.zeros((0, 4))}, "B >= 1"),
    ("decode_batch_scores", {"point_coords": np.zeros((1, 0, 2)), "point_labels": np.zeros((1, 0))}, "N >= 1"),
    ("decode_batch_scores", {"boxes": np.zeros((0, 4))}, "B >= 1"),
    ("upscale", {"low_res_logits": np.zeros((1, 0, 0), np.float32)}, "low_res_logits"),
    ("upscale", {"low_res_logits": np.zeros((256, 256), np.float32)}, "low_res_logits"),
]


def _refuses_degenerate_shapes(predictor: PredictorBase) -> None:
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    for method, kwargs, message in DEGENERATE:
        with pytest.raises(ValueError, match=message):
            getattr(predictor, method)(**kwargs)
    predictor.decode_batch_scores(np.full((2, 1, 2), 5.0), np.ones((2, 1)))
    with pytest.raises(ValueError, match="integer prompt indices"):
        predictor.decode_batch_masks(np.array([0.7]))
    assert predictor.decode_batch_masks(np.array([], np.int64))[0].shape == (0, 3, 256, 256)
    with pytest.raises(ValueError, match="empty"):
        predictor.set_image(np.zeros((0, 3, 3), np.uint8))


def test_torch_predictor_refuses_degenerate_shapes(random_model):
    from tinysam_edge.models import TorchPredictor

    _refuses_degenerate_shapes(TorchPredictor(random_model))


def test_static_decoder_irs_must_match_their_manifest(random_model_dir, tmp_path):
    """An IR reshaped to an empty batch (what ``export --static-batch 0`` wrote) never reaches the compiler."""
    import openvino as ov

    copy = tmp_path / "model"
    shutil.copytree(random_model_dir, copy)
    model = shared_core().read_model(copy / "decoder_static_batch.xml")
    model.reshape({"point_coords": [0, 8, 2], "point_labels": [0, 8]})
    ov.save_model(model, copy / "empty_batch.xml", compress_to_fp16=False)  # a new name: the old .bin is memory-mapped
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["decoder_static_batch"] = "empty_batch.xml"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=r"decoder_static_batch IR's point_coords is \[0,8,2\], the manifest says \[4, 8, 2\]"):
        Predictor(copy, static_shapes=True)
    manifest["static_shapes"]["decoder_static_batch"]["batch"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="batch 0"):
        Predictor(copy, device="CPU")


def test_openvino_predictor_with_a_read_only_home(random_model_dir, tmp_path, monkeypatch):
    """The compiled-model cache is an optimisation: where it cannot be written, models compile without it (one warning).
    The predictor then runs, and refuses degenerate shapes before they reach OpenVINO."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("TINYSAM_EDGE_HOME", str(tmp_path / "afile" / "home"))  # under a regular file: unwritable even for root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(random_model_dir)
        assert "CACHE_DIR" not in compile_config("CPU")
    assert [str(w.message) for w in caught if "compiled-model cache" in str(w.message)] == [
        f"cannot use the compiled-model cache {tmp_path / 'afile' / 'home' / 'ov-cache' / 'cpu-f32'} (Not a directory); compiling without it"
    ]
    _refuses_degenerate_shapes(predictor)
    assert predictor.predict(np.array([[5.0, 5.0]]), np.array([1]))[0].shape == (3, 20, 30)


def test_unwritable_mask_fails_before_the_overlay(world, capsys, random_model_dir):
    out = world / "out.png"
    status, stderr = run(
        capsys,
        [
            "segment",
            str(world / "photo.png"),
            "--model-dir",
            str(random_model_dir),
            "--point",
            "5,5",
            "--out",
            str(out),
            "--mask-out",
            str(world / "afile" / "m.png"),
        ],
    )
    assert_one_line_error(status, stderr, "is not a folder")
    assert not out.exists()


def test_sigterm_is_handled_like_ctrl_c(world, capsys, monkeypatch):
    """SIGTERM raises inside the command, so its temp files go as they do on Ctrl-C; the exit status is 143."""
    target = world / "weights-list.txt"

    def terminated_while_writing():  # stands in for any command's slow write
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
        return world

    monkeypatch.setattr("tinysam_edge.weights.cache_dir", terminated_while_writing)
    handler = signal.getsignal(signal.SIGTERM)
    status, stderr = run(capsys, ["weights", "list"])
    assert status == 143 and stderr == "tinysam-edge: terminated\n" and not target.exists()
    assert signal.getsignal(signal.SIGTERM) is handler  # main() restores the handler it found


def _process(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinysam_edge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_process_static_batch_zero_on_auto(world):
    """The crash of the issue (AUTO on a static batch 0 model dir) is now one line from a real process."""
    process = _process(
        "segment",
        str(world / "photo.png"),
        "--model-dir",
        str(world / "md_batch0"),
        "--device",
        "AUTO",
        "--point",
        "5,5",
        "--out",
        str(world / "o.png"),
    )
    _, stderr = process.communicate(timeout=120)
    assert_one_line_error(process.returncode, stderr, "batch 0")


def test_process_sigterm_during_export_leaves_no_staged_dir(random_checkpoint, tmp_path):
    out = tmp_path / "exported"
    process = _process("export", "--checkpoint", str(random_checkpoint), "--out", str(out))
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".exported.*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the staged folder exists: the case that used to be left behind
    assert list(tmp_path.glob(".exported.*")), "the export never staged its folder"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and stderr.strip().endswith("tinysam-edge: terminated") and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
