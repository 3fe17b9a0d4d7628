"""Segment an image from a point, a point pair and a box with the PyTorch model; save the three overlays side by side.

    python demos/point_box_prompts.py IMAGE --checkpoint tinysam_42.3 --out prompts.png
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tinysam_edge import TinySamError, load_image
from tinysam_edge.image import save_image
from tinysam_edge.models import TorchPredictor, build_sam
from tinysam_edge.visualize import draw_overlay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--checkpoint", default="tinysam_42.3", help="checkpoint file or registry name")
    parser.add_argument("--out", default="prompts.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    try:
        image = load_image(args.image)
        if Path(args.out).exists() and not args.overwrite:
            raise TinySamError(f"{args.out} exists; pass --overwrite to replace it")
        predictor = TorchPredictor(build_sam("vit_t", checkpoint=args.checkpoint))
    except (TinySamError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    start = time.perf_counter()
    predictor.set_image(image)
    print(f"image {w}x{h}: encoder {time.perf_counter() - start:.2f} s (torch eager, fp32, CPU)")

    prompts = {
        "centre point": dict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1])),
        "point + negative point": dict(point_coords=np.array([[w / 2, h / 2], [w / 8, h / 8]]), point_labels=np.array([1, 0])),
        "box": dict(box=np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4])),
    }
    panels = []
    for name, prompt in prompts.items():
        start = time.perf_counter()
        masks, scores, _ = predictor.predict(**prompt, multimask_output=False)
        print(f"{name:24s} score {scores[0]:.3f}  area {int(masks[0].sum())} px  decode {1000 * (time.perf_counter() - start):.0f} ms")
        panels.append(draw_overlay(image, masks[0], prompt.get("point_coords"), prompt.get("point_labels"), prompt.get("box"), float(scores[0])))
    save_image(args.out, np.concatenate(panels, axis=1), overwrite=args.overwrite)
    print(f"overlays -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
