"""Live segmentation of a camera, video file or stream with persistent point/box prompts.

    python demos/webcam.py --source 0 --model-dir DIR                    # needs a display (opencv-python)
    python demos/webcam.py --source clip.mp4 --model-dir DIR --headless --point 480,270 --max-frames 100 --record out.mp4

Every frame is embedded once and the same prompts are decoded on it, so a click follows the scene.
``--headless`` runs without a window and writes the annotated video and per-frame timings (JSON).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge import Predictor, TinySamError
from tinysam_edge.visualize import draw_overlay


def open_source(source: str) -> cv2.VideoCapture:
    """A camera index, a video file or a stream URL; raises TinySamError if it cannot be opened."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise TinySamError(f"cannot open video source {source!r} (no such camera, file or stream)")
    return capture


def annotate(frame_rgb: np.ndarray, mask: np.ndarray | None, prompts: dict, score: float | None, lines: list[str]) -> np.ndarray:
    """Mask, prompts and a status block (FPS, stage latencies, device) drawn on one frame."""
    out = draw_overlay(frame_rgb, mask if mask is not None else np.zeros(frame_rgb.shape[:2], bool), prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("box"), score)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (8, out.shape[0] - 10 - 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def run_headless(predictor: Predictor, capture: cv2.VideoCapture, prompts: dict, max_frames: int, record: Path | None) -> list[dict]:
    """Segment up to ``max_frames`` frames with fixed prompts; returns per-frame timings (ms)."""
    writer, timings, fps = None, [], 0.0
    for index in range(max_frames):
        start = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            print(f"source ended after {index} frames", file=sys.stderr)
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        predictor.set_image(rgb)
        mask, score = None, None
        if prompts:
            masks, scores, _ = predictor.predict(**prompts, multimask_output=False)
            mask, score = masks[0], float(scores[0])
        draw_start = time.perf_counter()
        stages = {k: 1000 * v for k, v in predictor.timings.items()}
        lines = [f"{fps:.1f} FPS  " + "  ".join(f"{k} {v:.0f}ms" for k, v in stages.items()), f"{predictor.device_used} {predictor.precision_used}"]
        out = cv2.cvtColor(annotate(rgb, mask, prompts, score, lines), cv2.COLOR_RGB2BGR)
        if record is not None:
            if writer is None:
                writer = cv2.VideoWriter(str(record), cv2.VideoWriter_fourcc(*"mp4v"), capture.get(cv2.CAP_PROP_FPS) or 25.0, (out.shape[1], out.shape[0]))
            writer.write(out)
        end = time.perf_counter()
        fps = 1.0 / (end - start)
        timings.append({"frame": index, **stages, "draw": 1000 * (end - draw_start), "total": 1000 * (end - start), "mask_area": int(mask.sum()) if mask is not None else 0})
    if writer is not None:
        writer.release()
    return timings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL (default: 0)")
    parser.add_argument("--model-dir", required=True, help="exported model dir (FP32 or INT8)")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--precision", help="f32 / bf16 / f16 (default: f32 on CPU/GPU)")
    parser.add_argument("--headless", action="store_true", help="no window: scripted prompts, write --record and --timings")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]", help="persistent point prompt (repeatable)")
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="persistent box prompt")
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--record", type=Path, help="write the annotated video (.mp4)")
    parser.add_argument("--timings", type=Path, help="write per-frame timings (.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = {}
    try:
        if args.point:
            values = [[float(v) for v in p.split(",")] for p in args.point]
            prompts["point_coords"] = np.array([v[:2] for v in values])
            prompts["point_labels"] = np.array([int(v[2]) if len(v) > 2 else 1 for v in values])
        if args.box:
            prompts["box"] = np.array([float(v) for v in args.box.split(",")])
        if not args.headless:
            raise TinySamError("the interactive window is not implemented yet; use --headless with --point/--box")
        capture = open_source(args.source)
        predictor = Predictor(args.model_dir, device=args.device, precision=args.precision)
        timings = run_headless(predictor, capture, prompts, args.max_frames, args.record)
    except (TinySamError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.timings is not None:
        args.timings.write_text(json.dumps({"device": predictor.device_used, "precision": predictor.precision_used, "frames": timings}, indent=1) + "\n")
    if timings:
        steady = timings[1:] or timings
        mean = {k: float(np.mean([t[k] for t in steady])) for k in steady[0] if k not in ("frame", "mask_area")}
        print(f"{len(timings)} frames, {1000 / mean['total']:.2f} FPS (" + ", ".join(f"{k} {v:.0f} ms" for k, v in mean.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
