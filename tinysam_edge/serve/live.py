"""``serve --source``: a camera or video attached to the box, segmented with persistent prompts and streamed as JPEG frames."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import cv2
import numpy as np

from ..capture import FrameSource
from ..overlay import PersistentPrompts, annotate
from ..predictor import PredictorBase
from .errors import ApiError
from .schema import parse_prompts

BOUNDARY = "frame"


class LiveFeed:
    """Reads ``source`` on a thread with a predictor of its own (a file loops), draws the persistent prompts' mask on
    each frame and keeps the newest annotated frame as JPEG. Live sources drop frames the model cannot keep up with."""

    def __init__(self, source: str, factory: Callable[[], PredictorBase]) -> None:
        self.source, self._factory = source, factory
        self.prompts = PersistentPrompts()
        self._lock = threading.Lock()
        self._jpeg: bytes | None = None
        self.frames = 0
        self.size_hw: tuple[int, int] | None = None
        self.fps = self.age_s = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the source and start segmenting on a background thread."""
        self._thread = threading.Thread(target=self._run, name="tinysam-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the frame in progress (OpenVINO aborts the process if it exits in the middle of an inference)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            predictor, frames = self._factory(), FrameSource(self.source)
            while not self._stop.is_set():
                frame = frames.read()
                if frame is None:
                    if frames.live:
                        raise RuntimeError(f"video source {self.source!r} stopped")
                    frames = FrameSource(self.source)  # a file plays in a loop
                    continue
                self._segment(predictor, frame, frames.captured_at)
        except Exception as exc:  # noqa: BLE001 - reported by GET /v1/live instead of killing the server
            self.error = f"{type(exc).__name__}: {exc}"

    def _segment(self, predictor: PredictorBase, frame: np.ndarray, captured: float) -> None:
        start = time.perf_counter()
        predictor.set_image(frame)
        with self._lock:
            prompts = self.prompts.kwargs()
        annotated, _ = annotate(frame, predictor, prompts)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            with self._lock:
                self._jpeg, self.size_hw = jpeg.tobytes(), frame.shape[:2]
                self.frames += 1
                self.fps = 0.8 * self.fps + 0.2 / max(time.perf_counter() - start, 1e-6)
                self.age_s = time.perf_counter() - captured

    def status(self) -> dict:
        """Source, frame size, frames segmented so far, the recent rate and the newest frame's age (capture to published)."""
        if self.error:
            raise ApiError(503, f"live source failed: {self.error}")
        h, w = self.size_hw or (0, 0)
        return {
            "source": self.source,
            "width": w,
            "height": h,
            "frames": self.frames,
            "fps": round(self.fps, 2),
            "frame_age_ms": round(1000 * self.age_s, 1),
        }

    def latest(self) -> tuple[int, bytes]:
        """The newest annotated frame (its number and JPEG bytes); 503 until the first one."""
        with self._lock:
            if self._jpeg is None:
                raise ApiError(503, f"live source failed: {self.error}" if self.error else "no frame yet", {"Retry-After": "1"})
            return self.frames, self._jpeg

    def set_prompts(self, body: dict) -> dict:
        """Replace the persistent prompts with a predict body (``{}`` clears them); refuses prompts outside the frame."""
        if self.size_hw is None:
            raise ApiError(503, "no frame yet", {"Retry-After": "1"})
        checked = parse_prompts(body, self.size_hw) if body else None
        with self._lock:
            self.prompts.clear()
            if checked is not None:
                for (x, y), label in zip(
                    checked.coords if checked.coords is not None else [], checked.labels if checked.labels is not None else []
                ):
                    self.prompts.add_point(float(x), float(y), int(label))
                if checked.box is not None:
                    self.prompts.set_box(*(float(v) for v in checked.box))
        return {"points": len(self.prompts.points), "box": self.prompts.box}

    async def mjpeg(self) -> AsyncIterator[bytes]:
        """The annotated frames as a multipart/x-mixed-replace stream (one part per new frame)."""
        last = -1
        while not self._stop.is_set():
            number, jpeg = self.latest()
            if number != last:
                last = number
                yield f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"
            await asyncio.sleep(0.02)
