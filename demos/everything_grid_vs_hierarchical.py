"""Everything mode, SAM's point grid next to TinySAM's hierarchical generator (same settings otherwise), with their timings.

python demos/everything_grid_vs_hierarchical.py IMAGE --model-dir DIR --out everything.png
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge import EverythingSettings, Predictor, TinySamError, load_image, make_generator
from tinysam_edge.cli import run_script
from tinysam_edge.image import save_image
from tinysam_edge.visualize import draw_masks


def options() -> argparse.ArgumentParser:
    """The demo's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--pred-iou-thresh", type=float, default=EverythingSettings.pred_iou_thresh)
    parser.add_argument("--stability-score-thresh", type=float, default=EverythingSettings.stability_score_thresh)
    parser.add_argument("--out", default="everything.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """The demo itself; user errors surface as TinySamError / ValueError (one line, exit 2)."""
    if Path(args.out).exists() and not args.overwrite:
        raise TinySamError(f"{args.out} exists; pass --overwrite to replace it")
    thresholds = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh}
    runs = [EverythingSettings(mode=mode, **thresholds) for mode in ("grid", "hierarchical")]  # bad thresholds fail before the model loads
    image = load_image(args.image)
    predictor = Predictor(args.model_dir, device=args.device)
    panels = []
    for settings in runs:
        generator = make_generator(predictor, settings)
        name = f"{settings.mode} {settings.points_per_side}x{settings.points_per_side}"
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
    sys.exit(run_script(options(), run))
