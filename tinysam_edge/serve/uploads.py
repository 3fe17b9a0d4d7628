"""Untrusted uploads to images: type sniffed from the bytes, size checked from the header before any pixel is decoded."""

import io
import json
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ApiError

#: Formats the service decodes (Pillow's names); anything else is refused whatever its file name says.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
#: Longest side accepted, whatever the pixel budget (very thin images make useless 1024 x 1 inputs).
MAX_SIDE = 16384


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> HxWx3 uint8 RGB, EXIF orientation applied (as browsers show it).

    Raises ``ApiError`` 400 for bytes that are not an image of ``FORMATS`` or are truncated or
    corrupt, and 413 when the header announces more than ``max_pixels`` pixels (checked before
    decoding, so a decompression bomb never allocates its pixels).
    """
    if not data:
        raise ApiError(400, "the image upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels or max(width, height) > MAX_SIDE:
                raise ApiError(
                    413,
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels, {MAX_SIDE} a side",
                )
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise ApiError(400, f"the upload is not an image this server reads ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ApiError(400, f"cannot decode the image (truncated or corrupt): {exc}") from None
    if rgb.width == 0 or rgb.height == 0:
        raise ApiError(400, "the image is empty (0 pixels)")
    return np.asarray(rgb, dtype=np.uint8)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (use finite numbers)")


def parse_json(body: bytes | str) -> dict:
    """A JSON object from a request body; ``ApiError`` 400 for anything else (NaN and Infinity included)."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant) if body else {}
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"expected a JSON object, got {type(value).__name__}")
    return value
