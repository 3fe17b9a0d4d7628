"""Decoder-output handling shared by every backend: token selection and low-res logits -> full-size masks."""

import cv2
import numpy as np

from .errors import TinySamError

#: How the single-mask output is chosen: TinySAM takes the best predicted IoU among tokens 1..3
#: (its token 0 was never trained); upstream SAM / MobileSAM use token 0.
FLAVOURS = ("tinysam", "sam")
MASK_THRESHOLD = 0.0


def select_tokens(iou_predictions: np.ndarray, multimask_output: bool, flavour: str) -> np.ndarray:
    """Which of the 4 decoder tokens each prompt returns: (B, 4) IoU -> (B, K) token indices.

    ``multimask_output=True`` gives tokens 1..3 (K=3). Otherwise K=1: the best-IoU token of 1..3
    for the ``"tinysam"`` flavour, token 0 for ``"sam"``.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; choose one of {FLAVOURS}")
    b = iou_predictions.shape[0]
    if multimask_output:
        return np.tile(np.arange(1, 4), (b, 1))
    if flavour == "sam":
        return np.zeros((b, 1), np.int64)
    return 1 + np.argmax(iou_predictions[:, 1:], axis=1)[:, None]


def select_masks(
    low_res_logits: np.ndarray, iou_predictions: np.ndarray, multimask_output: bool, flavour: str
) -> tuple[np.ndarray, np.ndarray]:
    """Pick outputs from all 4 decoder tokens (see ``select_tokens``): (B, 4, h, w), (B, 4) -> (B, K, h, w), (B, K)."""
    tokens = select_tokens(iou_predictions, multimask_output, flavour)
    if multimask_output:  # tokens 1..3 for every prompt: a slice, not a gather (the logits are 0.8 MB a prompt)
        return low_res_logits[:, 1:], iou_predictions[:, 1:]
    return np.take_along_axis(low_res_logits, tokens[:, :, None, None], axis=1), np.take_along_axis(iou_predictions, tokens, axis=1)


def postprocess_masks(
    low_res_logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """Upscale (C, 256, 256) logits to the original (C, H, W): bilinear to 1024, crop the padding, bilinear to H x W.

    OpenCV's INTER_LINEAR uses the same half-pixel sampling as torch's bilinear with
    align_corners=False, so this matches SAM's ``postprocess_masks`` up to float rounding. The first
    step upscales only the low-res rows and columns the crop reads (plus one for the interpolation):
    the scale stays exactly 4, so the kept pixels are bit-identical and the padding is never computed.
    ``out``: a C-contiguous (C, H, W) float32 array to write into (a reused buffer spares fresh pages).
    """
    h, w = original_size
    rows, cols = (min(low_res_logits.shape[axis], size // 4 + 2) for axis, size in ((1, input_size[0]), (2, input_size[1])))
    if out is None:
        out = np.empty((low_res_logits.shape[0], h, w), dtype=np.float32)
    elif out.shape != (low_res_logits.shape[0], h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {(low_res_logits.shape[0], h, w)}, got {out.shape} {out.dtype}"
        )
    with np.errstate(over="ignore"):  # float64 logits beyond float32's range saturate to +-inf, as a float32 decoder's would
        low_res_logits = low_res_logits.astype(np.float32, copy=False)
    for i, logits in enumerate(low_res_logits):
        up = cv2.resize(np.ascontiguousarray(logits[:rows, :cols]), (4 * cols, 4 * rows), interpolation=cv2.INTER_LINEAR)
        cv2.resize(up[: input_size[0], : input_size[1]], (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def mask_to_box(mask: np.ndarray, pixel_edges: bool = False) -> np.ndarray:
    """(H, W) bool -> (4,) XYXY box; zeros for an empty mask.

    By default the max coordinates are inclusive (SAM's convention: a one-pixel mask has width 0).
    With ``pixel_edges`` they are the far pixel edges (max + 1), the box that covers every pixel,
    which is COCO's ``toBbox`` convention and the right box prompt for an object.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + pixel_edges, rows[-1] + pixel_edges], np.float32)


def box_xywh(box: np.ndarray) -> list[int]:
    """XYXY -> XYWH as ints (the JSON form of every ``bbox`` this package writes)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE with ``counts`` as str (JSON-ready); needs pycocotools."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise TinySamError("COCO RLE output needs pycocotools: pip install 'tinysam-edge[eval]'") from exc
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros (the COCO / SAM uncompressed RLE)."""
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
