"""The headless live-segmentation loop of demos/webcam.py on a real clip, and its exits."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DATA

WEBCAM = Path(__file__).resolve().parents[1] / "demos" / "webcam.py"


def _clip(path: Path, frames: int, size=(160, 96)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WEBCAM), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_headless_run_writes_video_and_timings(random_model_dir, tmp_path):
    video = DATA / "video" / "sam2_bedroom.mp4"
    source = video if video.is_file() else _clip(tmp_path / "clip.mp4", 10, (960, 540))
    out, timings = tmp_path / "out.mp4", tmp_path / "timings.json"
    result = _run("--source", source, "--model-dir", random_model_dir, "--headless", "--point", "480,270", "--max-frames", 4, "--record", out, "--timings", timings)
    assert result.returncode == 0, result.stderr
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (960, 540)
    report = json.loads(timings.read_text())
    assert report["precision"] == "f32" and len(report["frames"]) == 4
    for frame in report["frames"]:
        assert {"wait_encoder", "preprocess", "encoder", "decoder", "postprocess", "decode_and_draw", "total"} <= set(frame) and frame["mask_area"] > 0
    assert "FPS" in result.stdout


def test_source_that_fails_or_ends(random_model_dir, tmp_path):
    failed = _run("--source", tmp_path / "missing.mp4", "--model-dir", random_model_dir, "--headless")
    assert failed.returncode == 2 and "cannot open video source" in failed.stderr and "Traceback" not in failed.stderr
    no_gui = _run("--source", _clip(tmp_path / "gui.mp4", 2), "--model-dir", random_model_dir)
    if no_gui.returncode != 0:  # opencv-python-headless: the window is refused with one clear line
        assert no_gui.returncode == 2 and "no GUI" in no_gui.stderr and "Traceback" not in no_gui.stderr
    ended = _run("--source", _clip(tmp_path / "short.mp4", 3), "--model-dir", random_model_dir, "--headless", "--point", "80,48", "--max-frames", 10)
    assert ended.returncode == 0 and "source ended after 3 frames" in ended.stderr and "3 frames" in ended.stdout
