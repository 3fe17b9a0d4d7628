"""Point and box prompts on one image with the OpenVINO runtime: the three multimask outputs of a click, and a box.

python demos/point_box.py IMAGE --model-dir DIR --point 500,375 --box 70,240,1700,900 --out point_box.png
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from tinysam_edge import Predictor, TinySamError, load_image, load_model
from tinysam_edge.cli import run_script
from tinysam_edge.image import save_image
from tinysam_edge.visualize import draw_overlay


def options() -> argparse.ArgumentParser:
    """The demo's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--point", required=True, help="X,Y of a positive click")
    parser.add_argument("--box", required=True, help="X0,Y0,X1,Y1")
    parser.add_argument("--out", default="point_box.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """The demo itself; user errors surface as TinySamError / ValueError (one line, exit 2)."""
    if Path(args.out).exists() and not args.overwrite:
        raise TinySamError(f"{args.out} exists; pass --overwrite to replace it")
    image = load_image(args.image)
    model = load_model(args.model_dir, device=args.device)  # compiled once; Predictor(model) is a cheap session on it
    predictor = Predictor(model)
    point = np.array([[float(v) for v in args.point.split(",")]])
    box = np.array([float(v) for v in args.box.split(",")])
    predictor.set_image(image)
    print(f"{model}: encoder {1000 * predictor.timings['encoder']:.0f} ms")
    panels = []
    masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    for mask, score in zip(masks, scores):  # the three candidate masks of one click
        panels.append(draw_overlay(image, mask, point, np.array([1]), None, float(score)))
    masks, scores, _ = predictor.predict(box=box, multimask_output=False)  # the best mask for the box
    panels.append(draw_overlay(image, masks[0], None, None, box, float(scores[0])))
    print(f"decoder {1000 * predictor.timings['decoder']:.0f} ms per prompt")
    save_image(args.out, np.concatenate(panels, axis=1), overwrite=args.overwrite)
    print(f"3 point masks + 1 box mask -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(options(), run))
