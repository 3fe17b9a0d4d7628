"""The live window used as a person would: ``tinysam-edge webcam`` in a virtual X display (Xvfb), real mouse
and key events from xdotool, and screenshots compared pixel for pixel with the overlay drawn in-process."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest

from conftest import DATA, require

if TYPE_CHECKING:
    from tinysam_edge.predictor import Predictor

FRAMES = 4
TIMEOUT = 240.0  # seconds to wait for one thing on screen (two cores shared with other work are slow)


@pytest.fixture(scope="module")
def display() -> str:
    """A fresh Xvfb display; the test skips only where Xvfb, xdotool or Tk are not installed."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: scripts/setup_test_env.sh installs them (apt-get install xvfb xdotool, as root)"
        )
    try:
        import tkinter  # noqa: F401
    except ImportError:
        pytest.skip("this Python has no tkinter: scripts/setup_test_env.sh installs Debian's python3-tk (as root)")
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as answer:  # read the whole line: Xvfb dies of SIGPIPE if the pipe closes before its newline
        number = answer.readline().strip()
    assert number.isdigit() and server.poll() is None, "Xvfb is installed but did not start"
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


class Screen:
    """The webcam window on a display: xdotool input, screenshots of its image area."""

    def __init__(self, display: str, process: subprocess.Popen) -> None:
        self.display, self.process = display, process
        self.env = {**os.environ, "DISPLAY": display}
        self.window = self.until(lambda: self._xdotool("search", "--name", "^tinysam-edge").split()[:1], "the window to open")[0]

    def _xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30, check=False).stdout

    def until(self, probe: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"webcam exited ({self.process.returncode}) while waiting for {what}: {self.process.stderr.read()}"
            )
            value = probe()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def title(self) -> str:
        return self._xdotool("getwindowname", self.window).strip()

    def wait_title(self, pattern: str) -> str:
        return self.until(lambda: re.search(pattern, self.title()), f"a title matching {pattern!r}").group(0)

    def grab(self, size: tuple[int, int]) -> np.ndarray:
        """The window's top-left (W, H) pixels as RGB (the image sits at the window's origin)."""
        from PIL import ImageGrab

        geometry = dict(line.split("=") for line in self._xdotool("getwindowgeometry", "--shell", self.window).split())
        x, y = int(geometry["X"]), int(geometry["Y"])
        return np.asarray(ImageGrab.grab(bbox=(x, y, x + size[0], y + size[1]), xdisplay=self.display).convert("RGB"))

    def wait_shows(self, *candidates: np.ndarray) -> int:
        """Wait until the window shows one of ``candidates`` exactly; its index."""
        size, differing = (candidates[0].shape[1], candidates[0].shape[0]), []

        def probe() -> int | None:
            shot = self.grab(size)
            differing[:] = [int((shot != c).any(axis=-1).sum()) for c in candidates]
            return next((i + 1 for i, n in enumerate(differing) if n == 0), None)

        try:
            return self.until(probe, "the expected image on screen") - 1
        except AssertionError as exc:
            raise AssertionError(f"{exc}; pixels that differ from each expected image: {differing}") from None

    def click(self, x: int, y: int, button: int = 1) -> None:
        self._xdotool("mousemove", "--window", self.window, str(x), str(y), "click", str(button))

    def drag(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        middle = ((start[0] + end[0]) // 2, (start[1] + end[1]) // 2)
        moves = [arg for xy in (middle, end) for arg in ("mousemove", "--window", self.window, str(xy[0]), str(xy[1]), "sleep", "0.1")]
        self._xdotool("mousemove", "--window", self.window, *map(str, start), "mousedown", "1", "sleep", "0.1", *moves, "mouseup", "1")

    def key(self, name: str) -> None:
        self._xdotool("mousemove", "--window", self.window, "5", "5", "key", name)


def _frames(video: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    return [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(count)]


def _overlay(
    predictor: "Predictor", frame: np.ndarray, points: list[tuple[int, int, int]], box: list[int] | None = None
) -> tuple[np.ndarray, int]:
    """What the window should show for these prompts on the predictor's current image, and the mask area."""
    from tinysam_edge.overlay import PersistentPrompts, annotate

    return annotate(frame, predictor, PersistentPrompts(points, box).kwargs())


def test_window_with_real_clicks_and_keys(display, parity_model_dir, tmp_path):
    from tinysam_edge.live import PREDICTOR_OPTIONS
    from tinysam_edge.predictor import Predictor

    video = require(DATA / "video" / "sam2_bedroom.mp4")
    frames = _frames(video, FRAMES)
    snapshots, timings = tmp_path / "snaps", tmp_path / "timings.json"
    options = {
        "--source": video,
        "--model-dir": parity_model_dir,
        "--max-frames": FRAMES,
        "--timings": timings,
        "--snapshot-dir": snapshots,
    }
    command = [sys.executable, "-m", "tinysam_edge", "webcam", *(str(v) for pair in options.items() for v in pair)]
    process = subprocess.Popen(
        command, env={**os.environ, "DISPLAY": display}, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        screen = Screen(display, process)
        screen.wait_title(r"frame 1\b")
        assert screen.wait_shows(*frames) < FRAMES - 1  # before any click: a plain video frame, no mask
        live_point = (480, 300, 1)
        screen.click(*live_point[:2])  # while the video plays: the point persists on the following frames
        screen.wait_title(f"stopped at --max-frames {FRAMES}")
        last = frames[-1]
        predictor = Predictor(parity_model_dir, **PREDICTOR_OPTIONS)  # built as the webcam command builds it
        predictor.set_image(last)
        expected, live_area = _overlay(predictor, last, [live_point])
        screen.wait_shows(expected)
        screen.key("c")
        screen.wait_shows(last)
        screen.click(300, 200)  # positive point, then a negative one: the window decodes both on the frame shown
        screen.wait_shows(_overlay(predictor, last, [(300, 200, 1)])[0])
        screen.click(700, 150, button=3)
        screen.wait_shows(_overlay(predictor, last, [(300, 200, 1), (700, 150, 0)])[0])
        screen.key("c")
        screen.wait_shows(last)
        screen.drag((250, 120), (650, 420))
        boxed, _ = _overlay(predictor, last, [], [250, 120, 650, 420])
        screen.wait_shows(boxed)
        screen.key("s")
        snapshot = screen.until(lambda: sorted(snapshots.glob("*.png")), "a snapshot PNG")[0]
        screen.key("q")
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"snapshot -> {snapshot}" in out and "FPS" in out
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(snapshot)), cv2.COLOR_BGR2RGB), boxed)
    _check_live_frames(json.loads(timings.read_text())["frames"], frames, predictor, live_point, live_area)


def _check_live_frames(records: list[dict], frames: list[np.ndarray], predictor: "Predictor", point: tuple, last_area: int) -> None:
    """Frames before the click have no prompt and no mask; every frame after it has the in-process mask of that point."""
    assert [r["frame"] for r in records] == list(range(len(frames)))
    clicked = [i for i, r in enumerate(records) if r["points"]]
    assert clicked and clicked[0] > 0 and clicked == list(range(clicked[0], len(frames))), clicked
    assert all(r["mask_area"] == 0 and r["box"] is None for r in records[: clicked[0]])
    for i in clicked:
        assert records[i]["points"] == [list(point)]
        if i == len(frames) - 1:
            area = last_area
        else:
            predictor.set_image(frames[i])
            area = _overlay(predictor, frames[i], [point])[1]
        assert records[i]["mask_area"] == area > 0, (i, records[i]["mask_area"], area)
