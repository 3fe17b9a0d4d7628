"""FP32 and INT8 masks side by side, with their timings.

    python demos/int8_vs_fp32.py IMAGE --fp32 FP32_DIR --int8 INT8_DIR --out side_by_side.png

Both model dirs come from ``tinysam-edge export`` and ``tinysam-edge quantize``. The left column is
FP32, the right INT8; the top row is a point prompt at the image centre, the bottom row a box.
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge import Predictor, TinySamError, load_image
from tinysam_edge.cli import run_script
from tinysam_edge.image import save_image
from tinysam_edge.visualize import draw_overlay


def label(panel: np.ndarray, text: str) -> np.ndarray:
    """Write a caption strip above a panel."""
    scale = max(0.6, panel.shape[1] / 1000)
    strip = np.full((int(40 * scale), panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, int(scale * 1.5)), cv2.LINE_AA)
    return np.concatenate([strip, panel])


def options() -> argparse.ArgumentParser:
    """The demo's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--fp32", required=True, help="FP32 model dir")
    parser.add_argument("--int8", required=True, help="INT8 model dir")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--out", default="int8_vs_fp32.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """The demo itself; user errors surface as TinySamError / ValueError (one line, exit 2)."""
    if Path(args.out).exists() and not args.overwrite:
        raise TinySamError(f"{args.out} exists; pass --overwrite to replace it")
    image = load_image(args.image)
    predictors = {"FP32": Predictor(args.fp32, device=args.device), "INT8": Predictor(args.int8, device=args.device)}
    h, w = image.shape[:2]
    prompts = [
        {"point_coords": np.array([[w / 2, h / 2]]), "point_labels": np.array([1])},
        {"box": np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4])},
    ]
    rows = [[], []]
    for name, predictor in predictors.items():
        start = time.perf_counter()
        predictor.set_image(image)
        encoder_ms = 1000 * (time.perf_counter() - start)
        for row, prompt in zip(rows, prompts):
            start = time.perf_counter()
            masks, scores, _ = predictor.predict(**prompt, multimask_output=False)
            click_ms = 1000 * (time.perf_counter() - start)
            caption = f"{name} ({predictor.precision_used} rest): set_image {encoder_ms:.0f} ms, click {click_ms:.0f} ms"
            print(f"{caption}, score {scores[0]:.3f}")
            row.append(
                label(
                    draw_overlay(
                        image, masks[0], prompt.get("point_coords"), prompt.get("point_labels"), prompt.get("box"), float(scores[0])
                    ),
                    caption,
                )
            )
    save_image(args.out, np.concatenate([np.concatenate(row, axis=1) for row in rows]), overwrite=args.overwrite)
    print(f"side by side -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(options(), run))
