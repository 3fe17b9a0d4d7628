"""Soak run (not part of the default test run): the headless ``webcam`` loop on a looped video, with FPS, stage times and memory.

    python demos/soak_webcam.py --model-dir DIR --video ../shared/data/video/sam2_bedroom.mp4 --frames 300 [--precision bf16]

It runs ``tinysam_edge.live.run`` (pipelined encoder, one persistent click, overlay drawn, nothing
shown) and prints the resident memory after warm-up, every 100 frames and at the end.
"""

import argparse
import sys

import cv2
import numpy as np

from tinysam_edge.capture import FrameSource
from tinysam_edge.cli import run_script
from tinysam_edge.cli.options import POSITIVE_INT, parse_point
from tinysam_edge.live import PREDICTOR_OPTIONS, run, summarize
from tinysam_edge.overlay import PersistentPrompts
from tinysam_edge.predictor import Predictor


class LoopedClip(FrameSource):
    """A video file that starts again from its first frame when it ends."""

    def read(self) -> np.ndarray | None:
        frame = super().read()
        if frame is None:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            frame = super().read()
        return frame


def options() -> argparse.ArgumentParser:
    """The soak test's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=POSITIVE_INT, default=300)
    parser.add_argument("--precision", choices=["f32", "bf16", "f16"], help="inference precision (default: f32)")
    parser.add_argument("--point", type=parse_point, default=(480.0, 270.0, 1), help="persistent click X,Y (default: 480,270)")
    return parser


def soak(args: argparse.Namespace) -> int:
    """Run the live loop for ``--frames`` frames and print the memory it holds."""
    predictor = Predictor(args.model_dir, precision=args.precision, **PREDICTOR_OPTIONS)
    timings = run(predictor, LoopedClip(args.video), PersistentPrompts([args.point]), args.frames)
    for t in timings:
        if t["frame"] in (9, len(timings) - 1) or (t["frame"] + 1) % 100 == 0:
            print(f"frame {t['frame'] + 1}: RSS {t['rss_mib']:.0f} MiB")
    steady = [t["rss_mib"] for t in timings[9:]] or [timings[-1]["rss_mib"]]
    print(f"{predictor.precision_used}: {summarize(timings)}; RSS after warm-up {steady[0]:.0f} MiB, at the end {steady[-1]:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(options(), soak))
