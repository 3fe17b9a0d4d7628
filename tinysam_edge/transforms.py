"""Image and prompt transforms shared by every backend: resize-longest-side, normalise+pad, coordinates."""

import numpy as np
from PIL import Image

IMG_SIZE = 1024
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def get_preprocess_shape(old_h: int, old_w: int, long_side: int = IMG_SIZE) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``long_side``, rounded like SAM (at least 1 pixel)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    new_h = max(1, int(old_h * scale + 0.5))
    new_w = max(1, int(old_w * scale + 0.5))
    return new_h, new_w


def resize_longest_side(image: np.ndarray, long_side: int = IMG_SIZE) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB image so its longest side is ``long_side``.

    Uses PIL's bilinear filter (antialiased when shrinking), which is what the official models saw
    in training and evaluation; OpenCV's INTER_LINEAR does not antialias and shifts the embeddings.
    """
    new_h, new_w = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalize_and_pad(resized: np.ndarray, size: int = IMG_SIZE) -> np.ndarray:
    """Normalise an HxWx3 uint8 image with SAM's mean/std and zero-pad it to (1, 3, size, size) float32."""
    h, w = resized.shape[:2]
    out = np.zeros((1, 3, size, size), dtype=np.float32)
    for c in range(3):  # channel by channel into place: no full-size temporaries (~10x faster)
        plane = out[0, c, :h, :w]
        np.subtract(resized[:, :, c], PIXEL_MEAN[c], out=plane, dtype=np.float32)
        np.divide(plane, PIXEL_STD[c], out=plane)
    return out


def preprocess(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 HxWx3 -> (encoder input (1, 3, 1024, 1024) float32, resized (h, w) before padding)."""
    resized = resize_longest_side(image)
    return normalize_and_pad(resized), (resized.shape[0], resized.shape[1])


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int = IMG_SIZE) -> np.ndarray:
    """Map (..., 2) (x, y) pixel coordinates of the original image into the resized frame (float64)."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int = IMG_SIZE) -> np.ndarray:
    """Map (..., 4) XYXY boxes of the original image into the resized frame (float64)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return apply_coords(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(boxes.shape)
