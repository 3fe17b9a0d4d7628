"""Live segmentation of a camera, video file or stream with prompts that persist across frames.

The encoder of frame N+1 runs in OpenVINO's AsyncInferQueue while frame N is decoded and drawn.
Cameras and streams are read by a thread that keeps only the newest frame, so a slow model drops
frames instead of queueing them; files are read frame by frame.
"""

import json
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import TinySamError
from .image import save_image
from .mask_generator import HierarchicalMaskGenerator
from .predictor import Predictor
from .visualize import draw_masks, draw_overlay

WINDOW = "tinysam-edge (left: +point, right: -point, drag: box, c: clear, e: everything, s: snapshot, q: quit)"


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


class PersistentPrompts:
    """Points and a box that persist across frames, edited by mouse in the window."""

    def __init__(self, points: list[tuple[float, float, int]] | None = None, box: list[float] | None = None) -> None:
        self.points = list(points or [])
        self.box = box
        self._drag: tuple[int, int] | None = None

    def kwargs(self) -> dict:
        """Keyword arguments for ``predict`` (empty when there is no prompt)."""
        out = {}
        if self.points:
            out["point_coords"] = np.array([p[:2] for p in self.points], dtype=np.float64)
            out["point_labels"] = np.array([p[2] for p in self.points])
        if self.box is not None:
            out["box"] = np.array(self.box, dtype=np.float64)
        return out

    def on_mouse(self, event: int, x: int, y: int, flags: int, param: object) -> None:
        """Left click: positive point; right click: negative point; left drag: box."""
        if event == cv2.EVENT_LBUTTONDOWN:
            self._drag = (x, y)
        elif event == cv2.EVENT_LBUTTONUP and self._drag is not None:
            x0, y0 = self._drag
            self._drag = None
            if abs(x - x0) > 4 and abs(y - y0) > 4:
                self.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
            else:
                self.points.append((x, y, 1))
        elif event == cv2.EVENT_RBUTTONDOWN:
            self.points.append((x, y, 0))


def _status(predictor: Predictor, fps: float) -> list[str]:
    stages = "  ".join(f"{k} {1000 * v:.0f}ms" for k, v in predictor.timings.items())
    return [f"{fps:.1f} FPS  {stages}", f"{predictor.device_used} {predictor.precision_used}"]


def annotate(frame: np.ndarray, predictor: Predictor, prompts: dict, fps: float) -> tuple[np.ndarray, int]:
    """Decode the prompts on the current embedding and draw mask, prompts and the status lines."""
    mask, score = np.zeros(frame.shape[:2], bool), None
    if prompts:
        masks, scores, _ = predictor.predict(**prompts, multimask_output=False)
        mask, score = masks[0], float(scores[0])
    out = draw_overlay(frame, mask, prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("box"), score)
    for i, line in enumerate(_status(predictor, fps)):
        cv2.putText(out, line, (8, out.shape[0] - 10 - 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1, cv2.LINE_AA)
    return out, int(mask.sum())


def run(predictor: Predictor, frames: FrameSource, prompts: PersistentPrompts, max_frames: int, record: Path | None = None, window: bool = False) -> list[dict]:
    """The pipelined loop; returns per-frame timings in ms. In a window, keys and mouse edit the prompts."""
    writer, timings, fps = None, [], 0.0
    frame = frames.read()
    if frame is None:
        raise TinySamError(f"video source {frames.source!r} gave no frame")
    finish = predictor.set_image_async(frame)
    for index in range(max_frames):
        start = time.perf_counter()
        finish()  # frame is now the current image
        nxt = frames.read() if index + 1 < max_frames else None
        if nxt is not None:
            finish = predictor.set_image_async(nxt)  # encodes while this frame is decoded and drawn
        draw_start = time.perf_counter()
        encoder_wait = draw_start - start
        out, area = annotate(frame, predictor, prompts.kwargs(), fps)
        bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
        if record is not None:
            if writer is None:
                rate = frames.capture.get(cv2.CAP_PROP_FPS) or 25.0
                writer = cv2.VideoWriter(str(record), cv2.VideoWriter_fourcc(*"mp4v"), rate, (bgr.shape[1], bgr.shape[0]))
            writer.write(bgr)
        if window and not _handle_keys(bgr, frame, predictor, prompts):
            break
        end = time.perf_counter()
        fps = 1.0 / (end - start)
        stages = {k: 1000 * v for k, v in predictor.timings.items()}
        timings.append({"frame": index, "wait_encoder": 1000 * encoder_wait, **stages, "decode_and_draw": 1000 * (end - draw_start), "total": 1000 * (end - start), "mask_area": area})
        if nxt is None:
            if index + 1 < max_frames:
                print(f"source ended after {index + 1} frames", file=sys.stderr)
            break
        frame = nxt
    if writer is not None:
        writer.release()
    return timings


def _handle_keys(bgr: np.ndarray, frame: np.ndarray, predictor: Predictor, prompts: PersistentPrompts) -> bool:
    cv2.imshow(WINDOW, bgr)
    key = cv2.waitKey(1) & 0xFF
    if key in (ord("q"), 27):
        return False
    if key == ord("c"):
        prompts.points, prompts.box = [], None
    elif key == ord("s"):
        path = Path(f"snapshot_{time.strftime('%Y%m%d_%H%M%S')}.png")
        save_image(path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        print(f"snapshot -> {path}")
    elif key == ord("e"):
        masks = HierarchicalMaskGenerator(predictor).generate(frame)
        cv2.imshow(WINDOW, cv2.cvtColor(draw_masks(frame, [m["segmentation"] for m in masks]), cv2.COLOR_RGB2BGR))
        cv2.waitKey(0)
    return True


def open_window(prompts: PersistentPrompts) -> None:
    """Create the interactive window; a clear error when OpenCV has no GUI (e.g. opencv-python-headless)."""
    try:
        cv2.namedWindow(WINDOW)
        cv2.setMouseCallback(WINDOW, prompts.on_mouse)
    except cv2.error as exc:
        raise TinySamError("this OpenCV has no GUI (opencv-python-headless); install opencv-python for the window, or use --headless") from exc


def write_timings(path: Path, predictor: Predictor, timings: list[dict]) -> None:
    """Per-frame timings and the device/precision as JSON."""
    path.write_text(json.dumps({"device": predictor.device_used, "precision": predictor.precision_used, "frames": timings}, indent=1) + "\n")


def summarize(timings: list[dict]) -> str:
    """FPS and mean per-stage milliseconds, leaving out the warm-up frame."""
    steady = timings[1:] or timings
    mean = {k: float(np.mean([t[k] for t in steady])) for k in steady[0] if k not in ("frame", "mask_area")}
    return f"{len(timings)} frames, {1000 / mean['total']:.2f} FPS (" + ", ".join(f"{k} {v:.0f} ms" for k, v in mean.items()) + ")"
