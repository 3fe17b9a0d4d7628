"""The command line as a user runs it: results on success, one-line errors and exit 2 on bad input."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest


def run_cli(*args: str, env_home=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinysam_edge", *map(str, args)], check=False, capture_output=True, text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    return path


def test_runtime_never_imports_torch():
    code = (
        "import sys, tinysam_edge, tinysam_edge.cli, tinysam_edge.weights, tinysam_edge.visualize, tinysam_edge.masks;"
        "tinysam_edge.cli.build_parser();"
        "assert 'torch' not in sys.modules and 'nncf' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'nncf')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_help_and_weights_list():
    result = run_cli("--help")
    assert result.returncode == 0 and "segment" in result.stdout and "weights" in result.stdout
    listing = run_cli("weights", "list")
    assert listing.returncode == 0 and "tinysam_42.3.pth" in listing.stdout and "(default)" in listing.stdout


def test_segment_writes_overlay_mask_and_json(image_file, random_checkpoint, tmp_path):
    out, mask_out = tmp_path / "overlay.png", tmp_path / "mask.png"
    result = run_cli(
        "segment", image_file, "--backend", "torch", "--checkpoint", random_checkpoint,
        "--point", "80,60", "--point", "10,10,0", "--box", "20,20,150,110", "--out", out, "--mask-out", mask_out, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    overlay, mask = cv2.imread(str(out)), cv2.imread(str(mask_out), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (120, 160, 3) and mask.shape == (120, 160)
    assert set(np.unique(mask)) <= {0, 255} and info["area"] == int((mask == 255).sum())
    assert info["flavour"] == "tinysam" and info["backend"] == "torch eager, f32"
    ys, xs = np.nonzero(mask)  # one box convention for every JSON output: XYWH with inclusive max (SAM's)
    assert info["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]

    again = run_cli("segment", image_file, "--backend", "torch", "--checkpoint", random_checkpoint, "--point", "80,60", "--out", out)
    assert_user_error(again, "exists; pass --overwrite")


def test_segment_openvino_is_the_default(image_file, random_model_dir, tmp_path):
    out = tmp_path / "ov.png"
    result = run_cli("segment", image_file, "--model-dir", random_model_dir, "--point", "80,60", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["backend"] == "OpenVINO on CPU, f32" and set(info["timings_ms"]) == {"preprocess", "encoder", "decoder", "postprocess"}
    assert cv2.imread(str(out)).shape == (120, 160, 3)
    assert_user_error(
        run_cli("segment", image_file, "--model-dir", tmp_path, "--point", "1,1", "--out", tmp_path / "x.png"), "no manifest.json"
    )
    assert_user_error(
        run_cli("segment", image_file, "--model-dir", random_model_dir, "--device", "NPU", "--point", "1,1", "--out", tmp_path / "x.png"),
        "not available",
    )


def test_export_then_reuse_from_cache(image_file, random_checkpoint, tmp_path):
    """A checkpoint (file or registry name) given to the OpenVINO backend is exported once into the cache.
    (``export --out`` itself, and its refusal to fill a folder that is not empty: tests/test_overwrite.py.)"""
    first = run_cli("segment", image_file, "--checkpoint", random_checkpoint, "--point", "80,60", "--out", tmp_path / "a.png")
    second = run_cli("segment", image_file, "--checkpoint", random_checkpoint, "--point", "80,60", "--out", tmp_path / "b.png")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "exporting random_vit_t.pth" in first.stderr and "exporting" not in second.stderr


def test_demo_writes_overlays_and_timings(image_file, random_model_dir, tmp_path):
    result = run_cli("demo", image_file, "--model-dir", random_model_dir, "--out-dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "OpenVINO on CPU, f32" in result.stdout and "encoder" in result.stdout and "decoder" in result.stdout
    assert all(cv2.imread(str(tmp_path / "demo" / name)).shape == (120, 160, 3) for name in ("demo_point.png", "demo_box.png"))
    assert_user_error(
        run_cli("demo", image_file, "--model-dir", random_model_dir, "--out-dir", tmp_path / "demo"), "exists; pass --overwrite"
    )
