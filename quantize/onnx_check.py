"""The check of an ONNX export: the pair in onnxruntime (CPU) against the torch model, case by case."""

from pathlib import Path

import numpy as np
import torch

from tinysam_edge.errors import TinySamError
from tinysam_edge.masks import MASK_THRESHOLD
from tinysam_edge.models.modeling import Sam

from .onnx_graphs import DECODER_INPUTS, ENCODER_INPUT, stability_score


def single_token(iou: np.ndarray, num_points: int, flavour: str) -> int:
    """The token (0..3) of (4,) scores that the decoder's single-mask output follows (``SamOnnxDecoder.select_single``)."""
    if flavour == "sam" and num_points > 2:
        return 0
    return 1 + int(np.argmax(iou[1:]))


def validation_cases() -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Prompts in the 1024 frame of a 480x640 image, SAM's conventions: (1, N, 2) coords, (1, N) labels, use the previous mask."""
    point, pad = [[512.0, 300.0]], [[0.0, 0.0]]
    box = [[300.0, 200.0], [700.0, 600.0]]
    cases = {
        "points": (point + [[200.0, 500.0]] + pad, [1, 0, -1], False),
        "box": (box, [2, 3], False),
        "box_point": (point + box, [1, 2, 3], False),
        "mask_input": (point + pad, [1, -1], True),
    }
    return {name: (np.array([c], np.float32), np.array([lab], np.float32), mask) for name, (c, lab, mask) in cases.items()}


def validation_image(seed: int = 0) -> np.ndarray:
    """A smooth 480x640 RGB uint8 test image (bilinear blobs from a seeded 12x16 grid)."""
    import cv2

    grid = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(grid, (640, 480), interpolation=cv2.INTER_LINEAR)


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def agreement(sam: Sam, out_dir: Path, decoder_file: str, return_single_mask: bool, use_stability_score: bool) -> dict[str, dict]:
    """Max abs differences of the ONNX pair in onnxruntime (CPU) against ``sam`` in torch on ``validation_cases``.

    Per case: ``low_res_logits``, ``iou`` (the scores output) and, for the upscaled masks,
    ``mask_mismatch`` (share of pixels that differ) and ``mask_iou``, against the torch logits upscaled
    by ``tinysam_edge.masks.postprocess_masks``; plus ``embeddings`` for the encoder.
    """
    from tinysam_edge.masks import postprocess_masks
    from tinysam_edge.transforms import normalize_and_pad, resize_longest_side

    image = validation_image()
    resized = resize_longest_side(image)
    tensor, input_size = normalize_and_pad(resized), resized.shape[:2]
    encoder = _session(out_dir / "encoder.onnx")
    in_graph = len(encoder.get_inputs()[0].shape) == 3  # PreprocessingEncoder takes the resized (H, W, 3) image
    embedding = encoder.run(None, {ENCODER_INPUT: resized.astype(np.float32) if in_graph else tensor})[0]
    decoder = _session(out_dir / decoder_file)
    with torch.no_grad():
        torch_embedding = sam.image_encoder(torch.from_numpy(tensor))
    report: dict[str, dict] = {"encoder": {"embeddings": float(np.abs(embedding - torch_embedding.numpy()).max())}}
    previous = np.zeros((1, 1, 256, 256), np.float32)
    for name, (coords, labels, use_mask) in validation_cases().items():
        mask_input = previous if use_mask else np.zeros_like(previous)
        feed = (embedding, coords, labels, mask_input, np.array([float(use_mask)], np.float32), np.array(image.shape[:2], np.float32))
        masks, scores, low_res = decoder.run(None, dict(zip(DECODER_INPUTS, feed)))
        with torch.no_grad():
            mask_prompt = torch.from_numpy(mask_input) if use_mask else None
            logits, iou = sam.decode(torch_embedding, torch.from_numpy(coords), torch.from_numpy(labels), mask_prompt)
            if use_stability_score:
                iou = stability_score(logits)
        logits, iou = logits.numpy(), iou.numpy()
        best = single_token(iou[0], coords.shape[1], sam.flavour)
        if return_single_mask:
            logits, iou = logits[:, best : best + 1], iou[:, best : best + 1]
        expected = postprocess_masks(logits[0], input_size, image.shape[:2]) > MASK_THRESHOLD
        got = masks[0] > MASK_THRESHOLD
        report[name] = {
            "low_res_logits": float(np.abs(low_res - logits).max()),
            "iou": float(np.abs(scores - iou).max()),
            "mask_mismatch": float((got != expected).mean()),
            "mask_iou": float((got & expected).sum() / max(1, (got | expected).sum())),
        }
        if not use_mask:
            previous = low_res[:, :1] if return_single_mask else low_res[:, best : best + 1]
    return report


#: Largest differences ``check_agreement`` accepts (the parity tolerances; observed ~1e-5).
TOLERANCES = {"embeddings": 1e-3, "low_res_logits": 2e-3, "iou": 1e-3, "mask_mismatch": 3e-3}


def check_agreement(report: dict[str, dict]) -> None:
    """Raise TinySamError naming the first case and output whose difference exceeds ``TOLERANCES``."""
    for case, values in report.items():
        for key, value in values.items():
            if key in TOLERANCES and not value <= TOLERANCES[key]:
                raise TinySamError(f"ONNX check failed: {case} {key} differs from the torch model by {value:.3g} (> {TOLERANCES[key]:g})")


def worst(cases: dict[str, dict]) -> dict[str, float]:
    """The largest difference of each kind over the cases (the smallest ``mask_iou``)."""
    keys = next(iter(cases.values()))
    return {key: (min if key == "mask_iou" else max)(case[key] for case in cases.values()) for key in keys}
