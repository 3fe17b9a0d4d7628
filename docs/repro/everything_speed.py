"""Hierarchical everything mode on the parity photo resized to 1000x750, with the everything fixture's thresholds:
variants interleaved, each round in a fresh process (one untimed run, then one timed), medians per variant.

    python docs/repro/everything_speed.py MODEL_DIR ROUNDS VARIANT [VARIANT ...]

A VARIANT is ``name:precision:batch_streams[:PYTHONPATH]`` (batch_streams ``-`` for a tree without that option,
PYTHONPATH to time another checkout of this project), e.g. ``before:bf16:-:/tmp/old`` ``two:bf16:2``.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PHOTO = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "parity" / "image.png"
THRESHOLDS = {"pred_iou_thresh": 0.0504, "stability_score_thresh": 0.4, "high_score_thresh": -0.147}
CHILD = """
import json, sys, time
import numpy as np
from PIL import Image
from tinysam_edge.predictor import Predictor
from tinysam_edge.mask_generator import HierarchicalMaskGenerator
model_dir, precision, streams, photo, thresholds = sys.argv[1:6]
image = np.asarray(Image.open(photo).convert("RGB").resize((1000, 750), Image.BILINEAR))
options = {} if streams == "-" else {"batch_streams": int(streams)}
generator = HierarchicalMaskGenerator(Predictor(model_dir, precision=precision, **options), **json.loads(thresholds))
generator.generate(image)
start = time.perf_counter()
masks = generator.generate(image)
total = time.perf_counter() - start
stats = generator.stats
print(json.dumps({"total": total, **stats["seconds"], "masks": len(masks), "before_nms": stats["before_nms"],
                  "prompts": stats["stage1"]["prompts"] + stats.get("stage2", {}).get("prompts", 0)}))
"""


def run(model_dir: str, variant: str) -> dict:
    """One fresh process of ``variant``: its timed run's seconds per stage and counts."""
    _, precision, streams, *path = variant.split(":")
    env = dict(os.environ, **({"PYTHONPATH": path[0]} if path else {}))
    args = [sys.executable, "-c", CHILD, str(Path(model_dir).resolve()), precision, streams, str(PHOTO), json.dumps(THRESHOLDS)]
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()
    )  # not a tree in the cwd first
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    model_dir, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            results[variant].append(run(model_dir, variant))
            print(variant, json.dumps(results[variant][-1]), flush=True)
    keys = ("total", "encoder", "decoder", "upscale_and_filter", "nms_and_output")
    print("| variant | " + " | ".join(f"{k} s" for k in keys) + " | prompts | masks before NMS |")
    print("| --- " * (len(keys) + 3) + "|")
    for variant, runs in results.items():
        medians = [statistics.median(r[k] for r in runs) for k in keys]
        counts = f"{runs[0]['prompts']} | {runs[0]['before_nms']}"
        print(f"| {variant.split(':')[0]} {variant.split(':')[1]} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {counts} |")


if __name__ == "__main__":
    main()
