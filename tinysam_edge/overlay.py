"""What the live views draw: prompts that persist across frames, and a frame annotated with their mask."""

import cv2
import numpy as np

from .predictor import PredictorBase
from .visualize import draw_overlay


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


def annotate(frame: np.ndarray, predictor: PredictorBase, prompts: dict) -> tuple[np.ndarray, int]:
    """Decode ``predict`` keyword arguments on the current embedding; the RGB overlay and the mask's pixel count."""
    if not prompts:
        return frame, 0
    masks, scores, _ = predictor.predict(**prompts, multimask_output=False)
    out = draw_overlay(frame, masks[0], prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("box"), float(scores[0]))
    return out, int(np.count_nonzero(masks[0]))


def status_line(predictor: PredictorBase, fps: float, age_s: float) -> str:
    """FPS, frame age at display (capture to screen), the last frame's stage times and what OpenVINO runs on, in one line."""
    stages = "  ".join(f"{k} {1000 * v:.0f}ms" for k, v in predictor.timings.items())
    return f"{fps:.1f} FPS  age {1000 * age_s:.0f}ms  {stages}  {predictor.describe()}"


def with_status(rgb: np.ndarray, line: str) -> np.ndarray:
    """A copy of an RGB frame with ``line`` written at its bottom (for recordings)."""
    out = rgb.copy()
    cv2.putText(out, line, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1, cv2.LINE_AA)
    return out
