"""Everything mode, SAM's 32x32 grid next to TinySAM's hierarchical generator, with their timings.

python demos/everything_grid_vs_hierarchical.py IMAGE --model-dir DIR --out everything.png
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge import HierarchicalMaskGenerator, MaskGenerator, Predictor, TinySamError, load_image
from tinysam_edge.image import save_image
from tinysam_edge.visualize import draw_masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--out", default="everything.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    try:
        return run(args)
    except (TinySamError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """The demo itself; user errors surface as TinySamError / ValueError."""
    if Path(args.out).exists() and not args.overwrite:
        raise TinySamError(f"{args.out} exists; pass --overwrite to replace it")
    image = load_image(args.image)
    predictor = Predictor(args.model_dir, device=args.device)
    thresholds = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh, "points_per_batch": 32}
    panels = []
    for name, generator in (
        ("grid 32x32", MaskGenerator(predictor, **thresholds)),
        ("hierarchical", HierarchicalMaskGenerator(predictor, **thresholds)),
    ):
        start = time.perf_counter()
        masks = generator.generate(image)
        seconds = time.perf_counter() - start
        caption = f"{name}: {len(masks)} masks in {seconds:.1f} s (decoder {generator.stats['seconds']['decoder']:.1f} s)"
        print(caption)
        panel = draw_masks(image, [m["segmentation"] for m in masks])
        cv2.putText(panel, caption, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        panels.append(panel)
    save_image(args.out, np.concatenate(panels, axis=1), overwrite=args.overwrite)
    print(f"side by side -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
