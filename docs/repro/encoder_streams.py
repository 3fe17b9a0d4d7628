"""The live loop's encoder pipelined two ways on the shared 960x540 clip, interleaved: one request on 1 stream x all
threads (this frame decoded while the next one encodes, the loop as it is) against two sessions on 2 streams x 1
thread (two frames encoding at once, each decoded with its own session); one click per frame, no drawing.

    python docs/repro/encoder_streams.py MODEL_DIR [f32|bf16] [ROUNDS]
"""

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinysam_edge.compiled_model import load_model
from tinysam_edge.predictor import Predictor

CLIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "video" / "sam2_bedroom.mp4"
CLICK = {"point_coords": np.array([[480, 270]]), "point_labels": np.array([1])}


def read_frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    frames = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(count)]
    capture.release()
    return frames


def one_in_flight(predictor: Predictor, frames: list[np.ndarray]) -> tuple[float, float]:
    """FPS and mean frame age (ms, from the frame's submission to its decoded click) with one frame encoding."""
    start, ages = time.perf_counter(), []
    submitted, finish = time.perf_counter(), predictor.set_image_async(frames[0])
    for i in range(len(frames)):
        finish()
        age_start = submitted
        if i + 1 < len(frames):
            submitted, finish = time.perf_counter(), predictor.set_image_async(frames[i + 1])
        predictor.predict(**CLICK)
        ages.append(time.perf_counter() - age_start)
    return len(frames) / (time.perf_counter() - start), 1000 * statistics.mean(ages)


def two_in_flight(sessions: list[Predictor], frames: list[np.ndarray]) -> tuple[float, float]:
    """The same with two sessions taking turns: frame i+2 starts encoding once frame i is decoded."""
    start, ages = time.perf_counter(), []
    submitted = [time.perf_counter(), time.perf_counter()]
    finishes = [sessions[k].set_image_async(frames[k]) for k in range(2)]
    for i in range(len(frames)):
        k = i % 2
        finishes[k]()
        sessions[k].predict(**CLICK)
        ages.append(time.perf_counter() - submitted[k])
        if i + 2 < len(frames):
            submitted[k], finishes[k] = time.perf_counter(), sessions[k].set_image_async(frames[i + 2])
    return len(frames) / (time.perf_counter() - start), 1000 * statistics.mean(ages)


def main(model_dir: str, precision: str, rounds: int) -> None:
    frames = read_frames(12)
    one = Predictor(load_model(model_dir, precision=precision))
    two_model = load_model(model_dir, precision=precision, sessions=2)
    two = [Predictor(two_model), Predictor(two_model)]
    one_in_flight(one, frames[:3]), two_in_flight(two, frames[:3])  # warm-up
    results: dict[str, list[tuple[float, float]]] = {"1 x 2 threads": [], "2 x 1 thread": []}
    for _ in range(rounds):
        results["1 x 2 threads"].append(one_in_flight(one, frames))
        results["2 x 1 thread"].append(two_in_flight(two, frames))
    print(f"{precision}, streams of the two-session model: {two_model.describe()['streams']}")
    for name, runs in results.items():
        fps, age = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name}: {fps:.2f} FPS, frame age {age:.0f} ms (median of {rounds} rounds)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "f32", int(sys.argv[3]) if len(sys.argv) > 3 else 3)
