"""The live loop: a camera, video file or stream segmented with prompts that persist across frames.

Frames come from ``tinysam_edge.capture`` (a live source keeps only its newest frame, so a slow model
drops frames instead of queueing them), prompts and drawing from ``tinysam_edge.overlay``. The encoder
of frame N+1 runs in OpenVINO's AsyncInferQueue while frame N is decoded and drawn (``in_flight`` sessions
keep that many frames encoding at once). In a window
(``tinysam_edge.window``) the last frame of a file stays on screen, still taking prompts, until the user quits.
"""

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .capture import FrameSource
from .errors import TinySamError
from .files import write_text
from .image import save_image
from .mask_generator import HierarchicalMaskGenerator
from .overlay import PersistentPrompts, annotate, status_line, with_status
from .predictor import Predictor
from .visualize import draw_masks
from .window import LiveWindow

#: How the live loop builds its ``Predictor``: one dynamic decoder graph for every prompt shape (compiled on the
#: first click), not one graph per shape (each 20-90 MB): a frame's one decode gains little from specialised graphs.
PREDICTOR_OPTIONS = {"specialized_graphs": 0}


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
        self.fps = self.age = 0.0

    def frame(self, index: int, frame: np.ndarray, captured: float, start: float, waited: float, draw_start: float) -> bool:
        """Annotate, record and show the current frame, then handle the window's events; False to quit.

        ``captured``: the frame arrived from the source; ``start``: its turn began; ``waited``: its embedding was
        ready; ``draw_start``: the next frame was submitted. The frame's age is from ``captured`` to its display.
        """
        prompt = {"points": [list(p) for p in self.prompts.points], "box": self.prompts.box}  # before the window's events edit it
        out, area = annotate(frame, self.predictor, self.prompts.kwargs())
        line = status_line(self.predictor, self.fps, self.age)
        if self.writer is not None:
            self.writer.write(cv2.cvtColor(with_status(out, line), cv2.COLOR_RGB2BGR))
        go_on = True
        if self.window is not None:
            self.window.show(out, f"frame {index + 1}   {line}", title=f"frame {index + 1}")
            go_on = self.handle(self.window.poll(), frame)
        end = time.perf_counter()
        self.fps, self.age = 1.0 / (end - start), end - captured
        stages = {k: 1000 * v for k, v in self.predictor.timings.items()}
        self.timings.append(
            {
                "frame": index,
                "wait_encoder": 1000 * (waited - start),
                "next_frame": 1000 * (draw_start - waited),
                **stages,
                "decode_and_draw": 1000 * (end - draw_start),
                "total": 1000 * (end - start),
                "frame_age": 1000 * self.age,
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
    in_flight: int = 1,
) -> list[dict]:
    """The pipelined loop; per-frame timings in ms. A window shows the frames, and holds the last one until quit.

    ``in_flight`` frames encode at once, each on its own session of ``predictor.model`` (compile it with
    ``sessions=in_flight`` so they run in parallel). A session submits its next frame as soon as its
    current one is embedded, and decodes the current one meanwhile, so every frame is shown with its
    own embedding, in order.
    """
    live = Live(predictor, prompts, window, snapshot_dir)
    sessions = [predictor, *(Predictor(predictor.model) for _ in range(in_flight - 1))]
    pending: deque[tuple[Predictor, np.ndarray, float, Callable[[], None]]] = deque()
    for session in sessions[:max_frames]:
        if not _submit(frames, session, pending):
            break
    if not pending:
        raise TinySamError(f"video source {frames.source!r} gave no frame")
    if record is not None:
        shape = pending[0][1].shape
        live.writer = open_writer(record, (shape[1], shape[0]), frames.rate)
    submitted = len(pending)
    try:
        for index in range(max_frames):
            start = time.perf_counter()
            session, frame, captured, finish = pending.popleft()
            finish()  # frame is now the session's current image
            waited = time.perf_counter()
            if submitted < max_frames and _submit(frames, session, pending):  # encodes while this frame is decoded and drawn
                submitted += 1
            live.predictor = session
            if not live.frame(index, frame, captured, start, waited, time.perf_counter()):
                return live.timings
            if not pending:
                ended = submitted < max_frames
                note = f"source ended after {index + 1} frames" if ended else f"stopped at --max-frames {max_frames}"
                if ended:
                    print(note, file=sys.stderr)
                if window is not None:
                    live.hold(frame, note)
                return live.timings
    finally:
        if live.writer is not None:
            live.writer.release()
    return live.timings


def _submit(frames: FrameSource, session: Predictor, pending: deque) -> bool:
    """Read the next frame and start embedding it on ``session``; False when the source has ended."""
    frame = frames.read()
    if frame is None:
        return False
    pending.append((session, frame, frames.captured_at, session.set_image_async(frame)))
    return True


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
