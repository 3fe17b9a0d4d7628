"""Reading images and bringing arrays to the HxWx3 uint8 RGB form the models expect."""

import glob
from pathlib import Path

import cv2
import numpy as np

from .errors import TinySamError
from .files import atomic_write

#: File types every command reads as images (and accepts as image outputs).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Larger image files are refused before reading them (a device such as /dev/zero, a runaway file).
MAX_IMAGE_BYTES = 1 << 30


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (see ``decode_image``)."""
    path = Path(path)
    if not path.is_file():
        raise TinySamError(f"image {path} is not a file" if path.exists() else f"image not found: {path}")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise TinySamError(f"image {path} is larger than {MAX_IMAGE_BYTES >> 20} MiB; no photo is that big")
    return decode_image(np.fromfile(path, dtype=np.uint8), f"image {path}")


def decode_image(data: bytes | np.ndarray, name: str = "the image") -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB: the one decoder of every command and of ``serve``.

    OpenCV applies the EXIF orientation, converts grayscale and alpha to RGB and 16-bit samples to 8 bits
    (the high byte); it refuses float samples, truncated and corrupt files. ``name`` words the error.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV allows
        raise TinySamError(f"cannot decode {name} (OpenCV refuses it: {exc.err or exc})") from exc
    if image is None:
        raise TinySamError(f"cannot decode {name} (corrupt or not an image format OpenCV reads)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def to_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate an image array and return it as contiguous HxWx3 uint8 RGB.

    Grayscale (HxW or HxWx1) is replicated to three channels and a fourth (alpha) channel is dropped;
    ``image_format="BGR"`` flips OpenCV-ordered channels.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")  # noqa: TRY004 - one exception type for any bad image
    if image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (0..255), got {image.dtype}; convert it, e.g. (img * 255).round().astype(np.uint8) for 0..1 floats"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def save_image(path: str | Path, image: np.ndarray, overwrite: bool = False) -> None:
    """Write an RGB (HxWx3) or single-channel uint8 image atomically; the format follows the extension."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TinySamError(f"{path} exists; pass --overwrite to replace it")
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(path.suffix or ".png", array)
    if not ok:
        raise TinySamError(f"cannot encode an image as {path.suffix!r}; use .png or .jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def list_images(spec: str | Path) -> list[Path]:
    """Image files of a folder (sorted) or a glob pattern; raises TinySamError when there are none."""
    path = Path(spec)
    candidates = path.iterdir() if path.is_dir() else map(Path, glob.glob(str(spec)))
    files = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TinySamError(f"no images found at {spec} (a folder or a glob such as 'photos/*.jpg')")
    return files
