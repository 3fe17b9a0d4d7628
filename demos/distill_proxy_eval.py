"""Train and held-out mIoU (interior point, box, and the "mask = the filled box" baseline) of a run's student, and its sha256.

    python demos/distill_proxy_eval.py configs/proxy_coco_mini.toml [--checkpoint runs/proxy_coco_mini/student_last.pth]

Scores every object of every image with the training code's own evaluation (``models.training.evaluate``,
on the 256x256 low-res grid), for the run's deterministic train / held-out split.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from tinysam_edge.models import build_sam
from tinysam_edge.models.training import read_config
from tinysam_edge.models.training.data import SegmentationDataset
from tinysam_edge.models.training.devices import amp_dtype, training_device
from tinysam_edge.models.training.records import load_records, split_records
from tinysam_edge.models.training.step import evaluate
from tinysam_edge.weights import sha256_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="default: student_last.pth in the config's run.out")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    config = read_config(args.config, args.set)
    checkpoint = args.checkpoint or Path(config.run.out) / "student_last.pth"
    device = training_device(config.run.device)
    model = build_sam(config.student.model, checkpoint=checkpoint, flavour=config.student.flavour).to(device)
    records = load_records(config.data.images, config.data.annotations or None)
    if config.data.limit:
        records = records[: config.data.limit]
    splits = dict(zip(("train", "held-out"), split_records(records, config.data.val_fraction, config.run.seed), strict=True))
    result = {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint)}
    for name, subset in splits.items():
        data = SegmentationDataset(subset, max_masks=1000, min_area=config.data.min_area)
        result[name] = evaluate(model, data, device, len(data), amp_dtype(config.run.amp, device))
        result[name]["images"] = len(subset)
    print(json.dumps(result, indent=1))
    held = result["held-out"]
    print(
        f"held-out box mIoU {held['box_miou']:.4f} vs filled-box baseline {held['box_baseline_miou']:.4f}: "
        f"{'above' if held['box_miou'] > held['box_baseline_miou'] else 'NOT above'} the bar"
    )
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
