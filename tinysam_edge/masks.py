"""Decoder-output handling shared by every backend: token selection and low-res logits -> full-size masks."""

import cv2
import numpy as np


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


def select_masks(low_res_logits: np.ndarray, iou_predictions: np.ndarray, multimask_output: bool, flavour: str) -> tuple[np.ndarray, np.ndarray]:
    """Pick outputs from all 4 decoder tokens (see ``select_tokens``): (B, 4, h, w), (B, 4) -> (B, K, h, w), (B, K)."""
    tokens = select_tokens(iou_predictions, multimask_output, flavour)
    if multimask_output:  # tokens 1..3 for every prompt: a slice, not a gather (the logits are 0.8 MB a prompt)
        return low_res_logits[:, 1:], iou_predictions[:, 1:]
    return np.take_along_axis(low_res_logits, tokens[:, :, None, None], axis=1), np.take_along_axis(iou_predictions, tokens, axis=1)


def postprocess_masks(low_res_logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """Upscale (C, 256, 256) logits to the original (C, H, W): bilinear to 1024, crop the padding, bilinear to H x W.

    OpenCV's INTER_LINEAR uses the same half-pixel sampling as torch's bilinear with
    align_corners=False, so this matches SAM's ``postprocess_masks`` up to float rounding. The first
    step upscales only the low-res rows and columns the crop reads (plus one for the interpolation):
    the scale stays exactly 4, so the kept pixels are bit-identical and the padding is never computed.
    """
    h, w = original_size
    rows, cols = (min(low_res_logits.shape[axis], size // 4 + 2) for axis, size in ((1, input_size[0]), (2, input_size[1])))
    out = np.empty((low_res_logits.shape[0], h, w), dtype=np.float32)
    for i, logits in enumerate(low_res_logits.astype(np.float32, copy=False)):
        up = cv2.resize(np.ascontiguousarray(logits[:rows, :cols]), (4 * cols, 4 * rows), interpolation=cv2.INTER_LINEAR)
        crop = np.ascontiguousarray(up[: input_size[0], : input_size[1]])
        out[i] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w)
    return out
