"""Set-image and click times of an ONNX export in onnxruntime next to the OpenVINO model dir, interleaved round by round.

Run: ``python docs/repro/onnx_speed.py ONNX_DIR MODEL_DIR IMAGE [ROUNDS]``. Both sides include the host
work a user pays: set image = preprocessing + encoder; click = coordinates + decoder + masks at the
photo's size (onnxruntime upscales in the graph, OpenVINO on the host). OpenVINO runs f32 on CPU.
"""

import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from tinysam_edge import Predictor, load_image
from tinysam_edge.transforms import apply_coords, preprocess


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    onnx_dir, model_dir, image_path = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    image = load_image(image_path)
    h, w = image.shape[:2]
    clicks = np.random.default_rng(0).uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h), (8, 2))
    encoder = ort.InferenceSession(f"{onnx_dir}/encoder.onnx", providers=["CPUExecutionProvider"])
    decoders = {
        name: ort.InferenceSession(f"{onnx_dir}/{name}.onnx", providers=["CPUExecutionProvider"]) for name in ("decoder", "decoder_int8")
    }
    predictor = Predictor(model_dir, device="CPU", precision="f32")
    state = {}

    def ort_set_image() -> None:
        state["embedding"] = encoder.run(None, {"input_image": preprocess(image)[0]})[0]

    def ort_click(name: str, xy: np.ndarray) -> None:
        coords = apply_coords(np.array([[xy, (0.0, 0.0)]]), (h, w)).astype(np.float32)
        feed = {"image_embeddings": state["embedding"], "point_coords": coords, "point_labels": np.array([[1, -1]], np.float32)}
        feed |= {"mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}
        decoders[name].run(None, feed | {"orig_im_size": np.array([h, w], np.float32)})

    def ov_click(xy: np.ndarray) -> None:
        predictor.predict(point_coords=xy[None], point_labels=np.array([1]), multimask_output=False)

    times: dict[str, list[float]] = {}
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, shape compiles)
        runs = {
            "onnxruntime set image": lambda: timed(ort_set_image),
            "OpenVINO set image": lambda: timed(predictor.set_image, image),
            "onnxruntime click": lambda: statistics.median(timed(ort_click, "decoder", xy) for xy in clicks),
            "onnxruntime INT8 decoder click": lambda: statistics.median(timed(ort_click, "decoder_int8", xy) for xy in clicks),
            "OpenVINO click": lambda: statistics.median(timed(ov_click, xy) for xy in clicks[2:]),
        }
        names = list(runs) if round_ % 2 == 0 else list(runs)[::-1]  # alternate the order against drift
        for name in names:
            value = runs[name]()
            if round_:
                times.setdefault(name, []).append(value)
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} ms |")


if __name__ == "__main__":
    main()
