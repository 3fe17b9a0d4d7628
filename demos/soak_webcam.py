"""Soak test (not part of the default test run): loop a video for N frames and report memory at start and end.

    python demos/soak_webcam.py --model-dir DIR --video ../shared/data/video/sam2_bedroom.mp4 --frames 1000
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge import Predictor


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--point", default="480,270", help="persistent click X,Y")
    args = parser.parse_args()
    predictor = Predictor(args.model_dir)
    capture = cv2.VideoCapture(args.video)
    if not capture.isOpened():
        print(f"error: cannot open {args.video}", file=sys.stderr)
        return 2
    point = np.array([[float(v) for v in args.point.split(",")]])
    start, rss = time.perf_counter(), []
    for i in range(args.frames):
        ok, frame = capture.read()
        if not ok:  # loop the clip
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        predictor.set_image(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=False)
        if i in (9, args.frames - 1) or (i + 1) % 100 == 0:
            rss.append((i + 1, rss_mib()))
            print(f"frame {i + 1}: RSS {rss[-1][1]:.0f} MiB, {(i + 1) / (time.perf_counter() - start):.2f} FPS")
    print(f"RSS after warm-up (frame {rss[0][0]}): {rss[0][1]:.0f} MiB, at the end (frame {rss[-1][0]}): {rss[-1][1]:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
