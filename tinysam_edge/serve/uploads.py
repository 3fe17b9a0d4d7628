"""Untrusted bodies: multipart uploads to images (type sniffed from the bytes, size checked from the header before
any pixel is decoded) and JSON objects. These run on the parser threads (``intake.Intake.run``)."""

import io
import json
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import Field, File, parse_options_header

from ..errors import TinySamError
from ..image import decode_image
from .errors import ApiError

#: Formats the service decodes (Pillow's names); anything else is refused whatever its file name says.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
#: Longest side accepted, whatever the pixel budget (very thin images make useless 1024 x 1 inputs).
MAX_SIDE = 16384
#: Text fields one multipart upload may carry besides its image.
MAX_FIELDS = 4


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> HxWx3 uint8 RGB, decoded as every command decodes a file (``image.decode_image``:
    EXIF orientation applied, 16-bit samples to 8 bits, float samples refused).

    Raises ``ApiError`` 400 for bytes that are not an image of ``FORMATS`` or are truncated or
    corrupt, and 413 when the header announces more than ``max_pixels`` pixels (read by Pillow before
    anything is decoded, so a decompression bomb never allocates its pixels).
    """
    if not data:
        raise ApiError(400, "the image upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as header:
                width, height = header.size
    except UnidentifiedImageError:
        raise ApiError(400, f"the upload is not an image this server reads ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ApiError(400, f"cannot decode the image (truncated or corrupt): {exc}") from None
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise ApiError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels, {MAX_SIDE} a side")
    if width == 0 or height == 0:
        raise ApiError(400, "the image is empty (0 pixels)")
    try:
        return decode_image(data)
    except TinySamError:
        raise ApiError(400, "cannot decode the image (truncated, corrupt, or samples that are not 8/16-bit integers)") from None


def read_upload(body: bytearray, content_type: str, max_pixels: int) -> tuple[np.ndarray, dict[str, str]]:
    """A multipart/form-data body -> its decoded ``image`` file and its other (text) fields.

    ``ApiError`` 415 for another media type, 400 for a malformed body, 422 without an ``image`` file.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "send multipart/form-data with the image file in a field named 'image'")
    files: list[File] = []
    fields: list[Field] = []
    try:
        parser = FormParser(
            "multipart/form-data",
            fields.append,
            files.append,
            boundary=options[b"boundary"],
            config={"MAX_MEMORY_FILE_SIZE": len(body) + 1},
        )
        parser.write(body)
        parser.finalize()
        texts = {f.field_name.decode(): (f.value or b"").decode() for f in fields}
    except (FormParserError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    if len(files) > 1 or len(fields) > MAX_FIELDS:
        raise ApiError(400, f"too many parts: one image file and at most {MAX_FIELDS} fields")
    if not files or files[0].field_name != b"image":
        raise ApiError(422, "no file in the multipart field 'image'")
    data = files[0].file_object.getvalue()
    files[0].close()
    return decode_upload(data, max_pixels), texts


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
