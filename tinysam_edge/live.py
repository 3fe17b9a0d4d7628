"""Live segmentation of a camera, video file or stream with prompts that persist across frames.

The encoder of frame N+1 runs in OpenVINO's AsyncInferQueue while frame N is decoded and drawn.
Cameras and streams are read by a thread that keeps only the newest frame, so a slow model drops
frames instead of queueing them; files are read frame by frame. In a window (``tinysam_edge.window``)
the last frame of a file stays on screen, still taking prompts, until the user quits.
"""

import json
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import TinySamError
from .files import write_text
from .image import save_image
from .mask_generator import HierarchicalMaskGenerator
from .predictor import Predictor
from .visualize import draw_masks, draw_overlay
from .window import LiveWindow

#: How the live loop builds its ``Predictor``: one dynamic decoder graph for every prompt shape (compiled on the
#: first click), not one graph per shape (each 20-90 MB): a frame's one decode gains little from specialised graphs.
PREDICTOR_OPTIONS = {"specialized_graphs": 0}


def open_source(source: str) -> cv2.VideoCapture:
    """A camera index, a video file or a stream URL; raises TinySamError if it cannot be opened."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise TinySamError(f"cannot open video source {source!r} (no such camera, file or stream)")
    return capture


class FrameSource:
    """Frames as RGB; live sources (camera, URL) keep only the newest frame, files give every frame.

    With ``reconnect`` a live source that stops is reopened up to that many times, a second apart.
    """

    def __init__(self, source: str, reconnect: int = 0) -> None:
        self.source, self.reconnect = source, reconnect
        self.live = source.isdigit() or "://" in source
        self.capture = open_source(source)
        self._latest: np.ndarray | None = None
        self._ended = False
        self._lock = threading.Condition()
        if self.live:
            threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        attempts = self.reconnect
        while True:
            ok, frame = self.capture.read()
            if not ok:
                if attempts <= 0:
                    break
                attempts -= 1
                time.sleep(1.0)
                self.capture.release()
                self.capture = cv2.VideoCapture(int(self.source) if self.source.isdigit() else self.source)
                continue
            with self._lock:
                self._latest = frame  # older unprocessed frames are dropped here
                self._lock.notify()
        with self._lock:
            self._ended = True
            self._lock.notify()

    def read(self) -> np.ndarray | None:
        """The next (or newest) frame as RGB, or None when the source has ended."""
        if not self.live:
            ok, frame = self.capture.read()
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
        with self._lock:
            self._lock.wait_for(lambda: self._latest is not None or self._ended, timeout=10.0)
            frame, self._latest = self._latest, None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame is not None else None

    @property
    def rate(self) -> float:
        """Frames per second the source declares (25 where it declares none)."""
        return self.capture.get(cv2.CAP_PROP_FPS) or 25.0


class PersistentPrompts:
    """Points and a box that persist across frames; ``version`` counts the edits."""

    def __init__(self, points: list[tuple[float, float, int]] | None = None, box: list[float] | None = None) -> None:
        self.points = [tuple(p) for p in points or []]
        self.box = list(box) if box is not None else None
        self.version = 0

    def add_point(self, x: float, y: float, label: int) -> None:
        """A positive (1) or negative (0) point in frame pixels."""
        self.points.append((x, y, label))
        self.version += 1

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """The box (XYXY frame pixels), replacing any earlier one."""
        self.box = [x0, y0, x1, y1]
        self.version += 1

    def clear(self) -> None:
        """Forget every point and the box."""
        self.points, self.box = [], None
        self.version += 1

    def kwargs(self) -> dict:
        """Keyword arguments for ``predict`` (empty when there is no prompt)."""
        out = {}
        if self.points:
            out["point_coords"] = np.array([p[:2] for p in self.points], dtype=np.float64)
            out["point_labels"] = np.array([p[2] for p in self.points])
        if self.box is not None:
            out["box"] = np.array(self.box, dtype=np.float64)
        return out


def annotate(frame: np.ndarray, predictor: Predictor, prompts: dict) -> tuple[np.ndarray, int]:
    """Decode ``predict`` keyword arguments on the current embedding; the RGB overlay and the mask's pixel count."""
    if not prompts:
        return frame, 0
    masks, scores, _ = predictor.predict(**prompts, multimask_output=False)
    out = draw_overlay(frame, masks[0], prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("box"), float(scores[0]))
    return out, int(np.count_nonzero(masks[0]))


def status_line(predictor: Predictor, fps: float) -> str:
    """FPS, the last frame's stage times and what OpenVINO runs on, in one line."""
    stages = "  ".join(f"{k} {1000 * v:.0f}ms" for k, v in predictor.timings.items())
    return f"{fps:.1f} FPS  {stages}  {predictor.device_used} {predictor.precision_used}"


def with_status(rgb: np.ndarray, line: str) -> np.ndarray:
    """A copy of an RGB frame with ``line`` written at its bottom (for recordings)."""
    out = rgb.copy()
    cv2.putText(out, line, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def open_writer(path: Path, size: tuple[int, int], rate: float) -> cv2.VideoWriter:
    """An mp4 writer for (width, height) frames; one line of error when it cannot write ``path``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), rate, size)
    if not writer.isOpened():
        raise TinySamError(f"cannot write the recording {path} (is its folder writable?)")
    return writer


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux; NaN elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
    except OSError:
        return float("nan")


class Live:
    """One run of the loop: where annotated frames go (window, recording) and what keys do."""

    def __init__(self, predictor: Predictor, prompts: PersistentPrompts, window: LiveWindow | None, snapshot_dir: Path) -> None:
        self.predictor, self.prompts, self.window, self.snapshot_dir = predictor, prompts, window, snapshot_dir
        self.writer: cv2.VideoWriter | None = None
        self.timings: list[dict] = []
        self.fps = 0.0

    def frame(self, index: int, frame: np.ndarray, start: float, waited: float, draw_start: float) -> bool:
        """Annotate, record and show the current frame, then handle the window's events; False to quit.

        ``start``: the frame's turn began; ``waited``: its embedding was ready; ``draw_start``: the next frame was submitted.
        """
        prompt = {"points": [list(p) for p in self.prompts.points], "box": self.prompts.box}  # before the window's events edit it
        out, area = annotate(frame, self.predictor, self.prompts.kwargs())
        line = status_line(self.predictor, self.fps)
        if self.writer is not None:
            self.writer.write(cv2.cvtColor(with_status(out, line), cv2.COLOR_RGB2BGR))
        go_on = True
        if self.window is not None:
            self.window.show(out, f"frame {index + 1}   {line}", title=f"frame {index + 1}")
            go_on = self.handle(self.window.poll(), frame)
        end = time.perf_counter()
        self.fps = 1.0 / (end - start)
        stages = {k: 1000 * v for k, v in self.predictor.timings.items()}
        self.timings.append(
            {
                "frame": index,
                "wait_encoder": 1000 * (waited - start),
                "next_frame": 1000 * (draw_start - waited),
                **stages,
                "decode_and_draw": 1000 * (end - draw_start),
                "total": 1000 * (end - start),
                "rss_mib": rss_mib(),
                "mask_area": area,
                **prompt,
            }
        )
        return go_on

    def handle(self, commands: list[str], frame: np.ndarray) -> bool:
        """Run the window's commands on the current frame; False once one of them is ``quit``."""
        for command in commands:
            if command == "quit":
                return False
            if command == "snapshot":
                self.snapshot()
            elif command == "everything" and not self.everything(frame):
                return False
        return True

    def snapshot(self) -> None:
        """Save what the window shows as a new PNG (never replacing a file) and print its path."""
        stamp = time.strftime("%Y%m%d_%H%M%S")
        path, n = self.snapshot_dir / f"snapshot_{stamp}.png", 1
        while path.exists():
            n += 1
            path = self.snapshot_dir / f"snapshot_{stamp}_{n}.png"
        try:
            save_image(path, self.window.shown)
        except (TinySamError, OSError) as exc:  # a failed snapshot must not end the live session
            print(f"tinysam-edge: snapshot not saved: {exc}", file=sys.stderr, flush=True)
            return
        print(f"snapshot -> {path}", flush=True)

    def everything(self, frame: np.ndarray) -> bool:
        """Show every mask of the current frame until the next key or click; False if that key quits."""
        self.window.show(frame, "everything: finding every mask of this frame ...")
        self.window.poll()
        masks = HierarchicalMaskGenerator(self.predictor).generate(frame)
        self.window.show(
            draw_masks(frame, [m["segmentation"] for m in masks]), f"everything: {len(masks)} masks; any key or click goes back"
        )
        commands = self.window.wait_any()
        if "snapshot" in commands:
            self.snapshot()
        self.prompts.version += 1  # the live overlay has to be drawn again
        return "quit" not in commands

    def hold(self, frame: np.ndarray, note: str) -> None:
        """Keep the last frame on screen, redrawn after every prompt edit, until the user quits."""
        status, version, out = f"{note}; prompts still work, q quits", self.prompts.version, self.window.shown
        while True:
            self.window.show(out, status, title=f"{note} (q quits)")
            while version == self.prompts.version:
                if not self.handle(self.window.wait(), frame):
                    return
            version = self.prompts.version
            out, _ = annotate(frame, self.predictor, self.prompts.kwargs())


def run(
    predictor: Predictor,
    frames: FrameSource,
    prompts: PersistentPrompts,
    max_frames: int,
    record: Path | None = None,
    window: LiveWindow | None = None,
    snapshot_dir: Path = Path("."),
) -> list[dict]:
    """The pipelined loop; per-frame timings in ms. A window shows the frames, and holds the last one until quit."""
    live = Live(predictor, prompts, window, snapshot_dir)
    frame = frames.read()
    if frame is None:
        raise TinySamError(f"video source {frames.source!r} gave no frame")
    if record is not None:
        live.writer = open_writer(record, (frame.shape[1], frame.shape[0]), frames.rate)
    finish = predictor.set_image_async(frame)
    try:
        for index in range(max_frames):
            start = time.perf_counter()
            finish()  # frame is now the current image
            waited = time.perf_counter()
            nxt = frames.read() if index + 1 < max_frames else None
            if nxt is not None:
                finish = predictor.set_image_async(nxt)  # encodes while this frame is decoded and drawn
            if not live.frame(index, frame, start, waited, time.perf_counter()):
                return live.timings
            if nxt is None:
                note = f"source ended after {index + 1} frames" if index + 1 < max_frames else f"stopped at --max-frames {max_frames}"
                if index + 1 < max_frames:
                    print(note, file=sys.stderr)
                if window is not None:
                    live.hold(frame, note)
                return live.timings
            frame = nxt
    finally:
        if live.writer is not None:
            live.writer.release()
    return live.timings


def write_timings(path: Path, predictor: Predictor, timings: list[dict]) -> None:
    """Per-frame timings and the device/precision as JSON."""
    write_text(
        path, json.dumps({"device": predictor.device_used, "precision": predictor.precision_used, "frames": timings}, indent=1) + "\n"
    )


def summarize(timings: list[dict]) -> str:
    """FPS and mean per-stage milliseconds, leaving out the warm-up frame."""
    steady = timings[1:] or timings
    keys = [k for k in dict.fromkeys(k for t in steady for k in t) if k not in ("frame", "mask_area", "points", "box", "rss_mib")]
    mean = {k: float(np.mean([t[k] for t in steady if k in t])) for k in keys}
    rss = max(t["rss_mib"] for t in timings)
    return (
        f"{len(timings)} frames, {1000 / mean['total']:.2f} FPS ("
        + ", ".join(f"{k} {v:.0f} ms" for k, v in mean.items())
        + f"), peak RSS {rss:.0f} MiB"
    )
