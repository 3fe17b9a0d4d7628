"""Frames from a camera, a video file or a stream, as RGB; live sources drop what the consumer cannot keep up with."""

import threading
import time

import cv2
import numpy as np

from .errors import TinySamError


def is_live(source: str) -> bool:
    """Whether ``source`` is a camera index or a stream URL (frames arrive in real time), not a file."""
    return source.isdigit() or "://" in source


def _capture(source: str) -> cv2.VideoCapture:
    return cv2.VideoCapture(int(source) if source.isdigit() else source)


def open_source(source: str) -> cv2.VideoCapture:
    """A camera index, a video file or a stream URL; raises TinySamError if it cannot be opened."""
    capture = _capture(source)
    if not capture.isOpened():
        raise TinySamError(f"cannot open video source {source!r} (no such camera, file or stream)")
    return capture


class FrameSource:
    """Frames as RGB; live sources (camera, URL) keep only the newest frame, files give every frame.

    With ``reconnect`` a live source that stops is reopened up to that many times, a second apart.
    ``captured_at``: when the frame ``read`` returned last arrived from the source (``time.perf_counter``).
    """

    def __init__(self, source: str, reconnect: int = 0) -> None:
        self.source, self.reconnect = source, reconnect
        self.live = is_live(source)
        self.capture = open_source(source)
        self._latest: np.ndarray | None = None
        self._latest_at = self.captured_at = time.perf_counter()
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
                self.capture = _capture(self.source)
                continue
            with self._lock:
                self._latest, self._latest_at = frame, time.perf_counter()  # older unprocessed frames are dropped here
                self._lock.notify()
        with self._lock:
            self._ended = True
            self._lock.notify()

    def read(self) -> np.ndarray | None:
        """The next (or newest) frame as RGB, or None when the source has ended."""
        if not self.live:
            ok, frame = self.capture.read()
            self.captured_at = time.perf_counter()
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
        with self._lock:
            self._lock.wait_for(lambda: self._latest is not None or self._ended, timeout=10.0)
            frame, self._latest, self.captured_at = self._latest, None, self._latest_at
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame is not None else None

    @property
    def rate(self) -> float:
        """Frames per second the source declares (25 where it declares none)."""
        return self.capture.get(cv2.CAP_PROP_FPS) or 25.0
