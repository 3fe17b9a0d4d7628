"""The headless live-segmentation loop of demos/webcam.py on a real clip, its exits, and the window's one-line refusals."""

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
    return subprocess.run([sys.executable, str(WEBCAM), *map(str, args)], capture_output=True, text=True, timeout=600, check=False)


def test_headless_run_writes_video_and_timings(random_model_dir, tmp_path):
    video = DATA / "video" / "sam2_bedroom.mp4"
    source = video if video.is_file() else _clip(tmp_path / "clip.mp4", 10, (960, 540))
    out, timings = tmp_path / "out.mp4", tmp_path / "timings.json"
    result = _run(
        "--source",
        source,
        "--model-dir",
        random_model_dir,
        "--headless",
        "--point",
        "480,270",
        "--max-frames",
        4,
        "--record",
        out,
        "--timings",
        timings,
    )
    assert result.returncode == 0, result.stderr
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (960, 540)
    report = json.loads(timings.read_text())
    assert report["precision"] == "f32" and len(report["frames"]) == 4
    stages = {"wait_encoder", "next_frame", "preprocess", "encoder", "decoder", "postprocess", "decode_and_draw", "total", "rss_mib"}
    for frame in report["frames"]:
        assert stages <= set(frame) and frame["mask_area"] > 0 and frame["points"] == [[480, 270, 1]]
        # a frame is read before its encode starts and its turn begins, and its age ends at its display
        assert frame["frame_age"] >= max(frame["total"], frame["encoder"]), frame
    assert "FPS" in result.stdout and "frame_age" in result.stdout


def test_source_that_fails_or_ends(random_model_dir, tmp_path):
    failed = _run("--source", tmp_path / "missing.mp4", "--model-dir", random_model_dir, "--headless")
    assert failed.returncode == 2 and "cannot open video source" in failed.stderr and "Traceback" not in failed.stderr
    ended = _run(
        "--source", _clip(tmp_path / "short.mp4", 3), "--model-dir", random_model_dir, "--headless", "--point", "80,48", "--max-frames", 10
    )
    assert ended.returncode == 0 and "source ended after 3 frames" in ended.stderr and "3 frames" in ended.stdout


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and all(w in result.stderr for w in words), result.stderr


def test_window_says_what_is_missing(random_model_dir, tmp_path, monkeypatch):
    clip = _clip(tmp_path / "clip.mp4", 2)
    monkeypatch.delenv("DISPLAY", raising=False)
    _one_line_error(_run("--source", clip, "--model-dir", random_model_dir), "DISPLAY", "--headless")
    monkeypatch.setenv("DISPLAY", ":4242")  # no tkinter: the one line names Debian's package
    no_tk = "import sys; sys.modules['tkinter'] = None; from tinysam_edge.cli import main; sys.exit(main(['webcam', *sys.argv[1:]]))"
    result = subprocess.run(
        [sys.executable, "-c", no_tk, "--source", str(clip), "--model-dir", str(random_model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _one_line_error(result, "python3-tk", "--headless")
    pytest.importorskip("tkinter", reason="this Python has no tkinter; the no-X-server case needs it")
    _one_line_error(_run("--source", clip, "--model-dir", random_model_dir), "cannot open a window", ":4242")


def test_outputs_that_cannot_be_written(random_model_dir, tmp_path):
    clip = _clip(tmp_path / "clip.mp4", 3)
    (tmp_path / "file").write_text("a regular file")
    args = ("--model-dir", random_model_dir, "--headless", "--point", "80,48")
    _one_line_error(_run("--source", clip, *args, "--record", tmp_path / "file" / "out.mp4"), "file is not a folder")
    _one_line_error(_run("--source", clip, *args, "--timings", tmp_path / "file" / "t.json"), "file is not a folder")
    before = clip.read_bytes()
    for extra in ((), ("--overwrite",)):  # the source is never an output, whatever the flags
        _one_line_error(_run("--source", clip, *args, "--record", clip, *extra), "is the input")
    assert clip.read_bytes() == before
    for frames in ("0", "-1"):
        result = _run("--source", clip, *args, "--max-frames", frames)
        assert result.returncode == 2 and "--max-frames" in result.stderr and "must be in 1.." in result.stderr


def test_two_frames_in_flight_show_each_frame_with_its_own_embedding(random_model_dir, tmp_path):
    """--in-flight 2 encodes two frames at once on two sessions: every frame's mask equals the one-in-flight run's."""
    source = _clip(tmp_path / "clip.mp4", 7, (320, 240))
    areas = []
    for in_flight in (1, 2):
        timings = tmp_path / f"timings{in_flight}.json"
        args = ("--source", source, "--model-dir", random_model_dir, "--headless", "--point", "160,120", "--timings", timings)
        result = _run(*args, "--in-flight", in_flight)
        assert result.returncode == 0, result.stderr
        frames = json.loads(timings.read_text())["frames"]
        assert [f["frame"] for f in frames] == list(range(7)) and all(f["frame_age"] >= f["total"] for f in frames)
        areas.append([f["mask_area"] for f in frames])
    assert areas[0] == areas[1] and len(set(areas[0])) > 1, areas  # the clip's frames differ, so a stale embedding would show
    _one_line_error(_run("--source", source, "--model-dir", random_model_dir, "--headless", "--in-flight", 5), "--in-flight")
