"""Drawing masks and prompts over images for people to look at."""

import cv2
import numpy as np

MASK_COLOR = (30, 144, 255)
POSITIVE_COLOR = (40, 200, 60)
NEGATIVE_COLOR = (230, 40, 40)
BOX_COLOR = (40, 200, 60)


def draw_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    score: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Tint ``mask`` (HxW bool) on an RGB image, outline it, mark points (green +, red -), the box and the score."""
    out = image.copy()
    # one blend of the whole frame and a masked copy: about 2x faster than tinting the masked pixels by fancy indexing
    tinted = cv2.addWeighted(image, 1 - alpha, np.full_like(image, MASK_COLOR), alpha, 0)
    np.copyto(out, tinted, where=mask[..., None])
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    scale = max(image.shape[:2]) / 800
    thickness = max(1, round(2 * scale))
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, thickness // 2))
    if box is not None:
        x0, y0, x1, y1 = (int(np.rint(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR, thickness)
    if point_coords is not None:
        radius = max(3, round(7 * scale))
        for (x, y), label in zip(point_coords, point_labels):
            color = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
            center = (int(np.rint(x)), int(np.rint(y)))
            cv2.circle(out, center, radius, color, -1)
            cv2.circle(out, center, radius, (255, 255, 255), max(1, thickness // 2))
    if score is not None:
        text = f"score {score:.3f}"
        font_scale = 0.6 * max(scale, 0.5)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        cv2.rectangle(out, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
        cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def draw_masks(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.55, seed: int = 0) -> np.ndarray:
    """Paint every mask in its own colour (largest first, so small masks stay visible) with a thin outline."""
    out = image.astype(np.float32)
    colors = np.random.default_rng(seed).integers(40, 256, (len(masks), 3))
    for i in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
        out[masks[i]] = out[masks[i]] * (1 - alpha) + colors[i] * alpha
    out = out.astype(np.uint8)
    for mask in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out
