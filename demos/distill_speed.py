"""Distillation steps per second of a config, FP32 against autocast (bf16), measured in the same process.

    python demos/distill_speed.py configs/distill_smoke.toml --steps 8

Each variant trains ``--steps`` steps from scratch into a temporary folder (validation off, data loaded
in-process); the first step (warm-up) is left out of the rate. Prints steps/s per variant and the ratio.
"""

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import torch

from tinysam_edge.models.training import read_config, train


def steps_per_second(config_path: Path, steps: int, amp: str, out: Path) -> float:
    """Mean steps/s of one short run (steps 2..N, read back from its log.csv)."""
    overrides = [
        f"optim.max_steps={steps}",
        "data.num_workers=0",
        f"run.out={out}",
        f"run.amp={amp}",
        "run.log_every=1",
        f"run.val_every={steps + 1}",
        f"run.save_every={steps + 1}",
    ]
    train(read_config(config_path, overrides), log=lambda *_: None)
    with open(out / "log.csv") as f:
        rates = [float(r["steps_per_s"]) for r in csv.DictReader(f)][1:]
    return len(rates) / sum(1 / r for r in rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, config {args.config}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for amp in ("off", "bf16"):
            rates[amp] = steps_per_second(args.config, args.steps, amp, Path(tmp) / amp)
            print(f"amp {amp:4s}: {rates[amp]:.3f} steps/s ({1 / rates[amp]:.2f} s/step)", flush=True)
    print(f"bf16 autocast / fp32: {rates['bf16'] / rates['off']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
