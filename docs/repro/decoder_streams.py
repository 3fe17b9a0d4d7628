"""The split decoder's per-prompt graph (whole, and its IoU-only cut) on 1 stream x 2 threads (one request, the whole
batch) against 2 streams x 1 thread (two requests at once, half the batch each), interleaved; prints the ratio per batch.

    python docs/repro/decoder_streams.py MODEL_DIR [f32|bf16]
"""

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import openvino as ov

from tinysam_edge.decoder_graphs import _state_in_bf16, prompt_shaped
from tinysam_edge.devices import shared_core


def requests(core: ov.Core, model: ov.Model, batch: int, config: dict, count: int, state: list) -> list[ov.InferRequest]:
    """``count`` requests on ``model`` compiled for ``batch`` prompts of 2 points, the per-image state bound."""
    compiled = core.compile_model(prompt_shaped(model, batch, 2), "CPU", config)
    out = [compiled.create_infer_request() for _ in range(count)]
    for request in out:
        for i, tensor in enumerate(state):
            request.set_input_tensor(i, tensor)
    return out


def timed(run: Callable[[], None], samples: list[float]) -> None:
    start = time.perf_counter()
    run()
    samples.append(1000 * (time.perf_counter() - start))


def main(model_dir: str, precision: str) -> None:
    core = shared_core()
    image, prompt = (core.read_model(f"{model_dir}/decoder_{part}.xml") for part in ("image", "prompt"))
    if precision == "bf16":
        image, prompt = _state_in_bf16(image, into=False), _state_in_bf16(prompt, into=True)
    base = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    state_request = core.compile_model(image, "CPU", base).create_infer_request()
    state_request.infer({0: np.random.default_rng(0).random((1, 256, 64, 64), np.float32)})
    state = [state_request.get_output_tensor(i) for i in range(len(state_request.model_outputs))]
    n = len(state)
    rng = np.random.default_rng(1)
    for scores in (True, False):
        graph = ov.Model([prompt.output("iou_predictions")], prompt.get_parameters(), "scores") if scores else prompt
        for batch in (16, 32, 64):
            coords = rng.uniform(0, 1024, (batch, 2, 2)).astype(np.float32)
            labels = np.tile(np.array([[1, -1]], np.float32), (batch, 1))
            (one,) = requests(core, graph, batch, base, 1, state)
            first, second = requests(core, graph, batch // 2, base | {"NUM_STREAMS": "2"}, 2, state)
            half = batch // 2

            def whole(one=one, coords=coords, labels=labels) -> None:
                one.infer({n: coords, n + 1: labels})

            def halves(first=first, second=second, coords=coords, labels=labels, half=half) -> None:
                first.start_async({n: coords[:half], n + 1: labels[:half]})
                second.start_async({n: coords[half:], n + 1: labels[half:]})
                first.wait()
                second.wait()

            for run in (whole, halves, whole, halves):  # warm-up
                run()
            one_stream, two_streams = [], []
            for _ in range(7):
                timed(whole, one_stream)
                timed(halves, two_streams)
            a, b = statistics.median(one_stream), statistics.median(two_streams)
            kind = "IoU-only" if scores else "whole"
            print(f"{precision} {kind} B={batch}: 1 stream x 2 threads {a:.1f} ms, 2 x 1 {b:.1f} ms, ratio {b / a:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "bf16")
