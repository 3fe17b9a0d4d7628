"""Interleaved latency benchmark: torch eager vs OpenVINO f32 / bf16 on the same image and prompt."""

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from tinysam_edge import Predictor, __version__
from tinysam_edge.models import TorchPredictor, build_sam
from tinysam_edge.predictor import PredictorBase


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class ForeignLoad:
    """Cores' worth of CPU time used by *other* processes during a block (Linux; 0 elsewhere)."""

    def __enter__(self) -> "ForeignLoad":
        self._start = (time.perf_counter(), self._busy(), self._own())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = (b - a for a, b in zip(self._start, (time.perf_counter(), self._busy(), self._own())))
        self.cores = max(0.0, (busy - own) / wall) if wall > 0 else 0.0

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return 0.0
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def _time_variant(predictor: PredictorBase, image: np.ndarray, point: np.ndarray, clicks: int) -> dict[str, float]:
    predictor.set_image(image)
    encoder = predictor.timings["encoder"]
    decoder, total = [], []
    for _ in range(clicks):
        start = time.perf_counter()
        predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=False)
        total.append(time.perf_counter() - start)
        decoder.append(predictor.timings["decoder"])
    return {"encoder_ms": 1000 * encoder, "decoder_ms": 1000 * statistics.median(decoder), "click_ms": 1000 * statistics.median(total)}


def quick_bench(model_dir: str | Path, checkpoint: str | Path, rounds: int = 10, clicks: int = 5, device: str = "CPU", log=print) -> dict:
    """Encoder and one-click decoder latency of torch eager, OV f32 and OV bf16, interleaved round by round.

    Each round runs every variant once (rotating the order) on one real-size image; a round's
    numbers are kept only if other processes used under 0.25 cores meanwhile, unless no round is
    that clean, in which case all rounds are reported and marked contended.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    variants: dict[str, PredictorBase] = {"torch eager f32": TorchPredictor(build_sam("vit_t", checkpoint=checkpoint))}
    for precision in ("f32", "bf16"):
        p = Predictor(model_dir, device=device, precision=precision)
        variants[f"openvino {p.precision_used} ({p.device_used})"] = p
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    point = np.array([[512.0, 384.0]])
    for p in variants.values():  # warm-up: first inferences allocate and compile kernels
        _time_variant(p, image, point, 2)

    samples: dict[str, list[dict]] = {name: [] for name in variants}
    loads = []
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        with ForeignLoad() as load:
            round_results = {name: _time_variant(variants[name], image, point, clicks) for name in order}
        loads.append(load.cores)
        for name, result in round_results.items():
            samples[name].append(result)
        log(f"round {r + 1}/{rounds}: foreign load {load.cores:.2f} cores")
    clean = [i for i, c in enumerate(loads) if c < 0.25]
    kept = clean or list(range(rounds))
    results = {
        name: {key: statistics.median(s[i][key] for i in kept) for key in ("encoder_ms", "decoder_ms", "click_ms")} for name, s in samples.items()
    }
    base = results[names[0]]
    for result in results.values():
        result.update({f"{k}_speedup_vs_torch": base[k] / result[k] for k in ("encoder_ms", "decoder_ms", "click_ms")})
    return {
        "what": "median latency; encoder = IR/torch encoder only, decoder = one click (point + padding), click = decoder + mask upscaling",
        "rounds": rounds,
        "clean_rounds": len(clean),
        "contended": not clean,
        "foreign_load_cores": loads,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "device": device,
        "versions": {"tinysam_edge": __version__, "openvino": ov.get_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "results": results,
    }


def format_table(report: dict) -> str:
    """A Markdown table of a ``quick_bench`` report."""
    lines = [
        f"{report['cpu']}, {report['cores']} cores; {report['clean_rounds']}/{report['rounds']} clean rounds" + (" (CONTENDED: numbers are noisy)" if report["contended"] else ""),
        "",
        "| variant | encoder ms | x vs torch | decoder ms (1 click) | x vs torch | click incl. upscaling ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['encoder_ms']:.0f} | {r['encoder_ms_speedup_vs_torch']:.2f} | {r['decoder_ms']:.1f} | {r['decoder_ms_speedup_vs_torch']:.2f} | {r['click_ms']:.1f} |"
        )
    return "\n".join(lines)
