"""Latency benchmarks: the Python pipeline (torch eager vs OpenVINO variants, interleaved) and benchmark_app on every IR."""

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tinysam_edge import HierarchicalMaskGenerator, MaskGenerator, Predictor
from tinysam_edge.files import atomic_write
from tinysam_edge.manifest import ENCODER_INPUT, Manifest
from tinysam_edge.models import TorchPredictor, build_sam
from tinysam_edge.predictor import PredictorBase

from .benchmark_app import run_benchmark_app
from .rounds import environment, interleaved_rounds, run_header


def _time_variant(predictor: PredictorBase, image: np.ndarray, point: np.ndarray, clicks: int) -> dict[str, float]:
    start = time.perf_counter()
    predictor.set_image(image)
    set_image = time.perf_counter() - start
    stages = dict(predictor.timings)
    decoder, post, click = [], [], []
    for _ in range(clicks):
        start = time.perf_counter()
        predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=False)
        click.append(time.perf_counter() - start)
        decoder.append(predictor.timings["decoder"])
        post.append(predictor.timings["postprocess"])
    return {
        "preprocess_ms": 1000 * stages["preprocess"],
        "encoder_ms": 1000 * stages["encoder"],
        "decoder_ms": 1000 * statistics.median(decoder),
        "postprocess_ms": 1000 * statistics.median(post),
        "click_ms": 1000 * statistics.median(click),
        "end_to_end_ms": 1000 * (set_image + statistics.median(click)),
    }


def pipeline_bench(variants: dict[str, PredictorBase], rounds: int = 10, clicks: int = 5, log=print) -> dict:
    """Python pipeline latency of each predictor, interleaved round by round; the first variant is the baseline.

    Each round runs every variant once (rotating the order) on one 1500x1000 image: set_image
    (preprocess + encoder) and ``clicks`` one-point predictions (decoder + postprocess). A round
    counts only if other processes used under 0.25 cores meanwhile, unless none is that clean, in
    which case all rounds are reported and marked contended.
    """
    image = np.random.default_rng(0).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)  # a real resize to 1024
    point = np.array([[512.0, 384.0]])
    for p in variants.values():  # warm-up: first inferences allocate and compile kernels
        _time_variant(p, image, point, 2)
    report = interleaved_rounds(list(variants), lambda name: _time_variant(variants[name], image, point, clicks), rounds, log)
    results = report["results"]
    base = next(iter(results.values()))
    for result in results.values():
        result.update({f"{k}_speedup": base[k] / result[k] for k in ("encoder_ms", "decoder_ms", "click_ms", "end_to_end_ms")})
    return {**report, "baseline": next(iter(variants))}


def openvino_variants(
    model_dir: str | Path, device: str, precisions: tuple[str, ...], label: str, plain_too: bool = False
) -> dict[str, Predictor]:
    """One predictor per precision; with ``plain_too`` also one without the split decoder (the baseline)."""
    variants = {}
    for precision in precisions:
        for split in (False, True) if plain_too else (True,):
            p = Predictor(model_dir, device=device, precision=precision, split_decoder=split)
            decoder = "" if not plain_too else (", split decoder" if split else ", plain decoder")
            variants[f"openvino {label} {p.precision_used} ({p.device_used}{decoder})"] = p
    return variants


def model_dirs(model_dir: str | Path, int8_dir: str | Path | None) -> dict[str, Path]:
    """The model dirs to time by their report labels: ``fp32-IR``, and ``int8-IR`` when given."""
    return {"fp32-IR": Path(model_dir)} | ({"int8-IR": Path(int8_dir)} if int8_dir is not None else {})


def _pipeline_variants(
    dirs: dict[str, Path], checkpoint: str | Path | None, device: str, precisions: tuple[str, ...]
) -> dict[str, PredictorBase]:
    """Torch eager (the baseline, first; left out without ``checkpoint``) and an OpenVINO predictor per model dir and precision."""
    torch.set_num_threads(os.cpu_count() or 1)
    variants: dict[str, PredictorBase] = {}
    if checkpoint is not None:
        variants["torch eager f32"] = TorchPredictor(build_sam("vit_t", checkpoint=checkpoint))
    for label, folder in dirs.items():
        variants.update(openvino_variants(folder, device, precisions, label))
    return variants


def quick_bench(
    model_dir: str | Path,
    int8_dir: str | Path | None,
    checkpoint: str | Path | None,
    rounds: int = 10,
    device: str = "CPU",
    precisions: tuple[str, ...] = ("f32", "bf16"),
    log=print,
) -> dict:
    """Encoder and one-click latency of torch eager and OpenVINO (FP32 and, if given, INT8 dir) at each of ``precisions``, interleaved."""
    variants = _pipeline_variants(model_dirs(model_dir, int8_dir), checkpoint, device, precisions)
    return {**environment(device), "pipeline": pipeline_bench(variants, rounds, log=log)}


def full_bench(
    model_dir: str | Path,
    int8_dir: str | Path | None,
    checkpoint: str | Path | None,
    rounds: int = 5,
    seconds: int = 10,
    device: str = "CPU",
    precisions: tuple[str, ...] = ("f32", "bf16"),
    log=print,
) -> dict:
    """benchmark_app on every IR (encoder f32/bf16/INT8, decoder one click and 64-prompt batch) plus the pipeline bench."""
    dirs = model_dirs(model_dir, int8_dir)
    apps = []
    encoder_shape = {ENCODER_INPUT: [1, 3, 1024, 1024]}
    for label, folder in dirs.items():
        manifest = Manifest.read(folder)
        for precision in precisions:
            log(f"benchmark_app: {label} encoder, {precision}")
            apps.append(
                {
                    "model": f"{label} encoder",
                    "precision": precision,
                    **run_benchmark_app(folder / manifest.files["encoder"], device, encoder_shape, precision, seconds),
                }
            )
        for batch, what in ((1, "decoder, 1 click"), (64, "decoder, 64 prompts")):
            shapes = {
                "image_embeddings": [1, 256, 64, 64],
                "point_coords": [batch, 2, 2],
                "point_labels": [batch, 2],
                "mask_input": [0, 1, 256, 256],
                "has_mask_input": [1],
            }
            log(f"benchmark_app: {label} {what}, f32")
            apps.append(
                {
                    "model": f"{label} {what}",
                    "precision": "f32",
                    **run_benchmark_app(folder / manifest.files["decoder"], device, shapes, "f32", seconds),
                }
            )
    variants = _pipeline_variants(dirs, checkpoint, device, precisions)
    return {**environment(device), "benchmark_app": apps, "pipeline": pipeline_bench(variants, rounds, log=log)}


def format_tables(report: dict) -> str:
    """Markdown tables of a ``quick_bench`` / ``full_bench`` report."""
    pipe = report["pipeline"]
    lines = [
        run_header(report, pipe),
        "",
        f"Python pipeline (medians; speed-ups vs {pipe['baseline']} in the same run):",
        "",
        "| variant | preprocess ms | encoder ms | x | decoder ms (1 click) | x | click incl. upscaling ms | set_image + click ms | x |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in pipe["results"].items():
        lines.append(
            f"| {name} | {r['preprocess_ms']:.0f} | {r['encoder_ms']:.0f} | {r['encoder_ms_speedup']:.2f} | {r['decoder_ms']:.1f} | {r['decoder_ms_speedup']:.2f}"
            f" | {r['click_ms']:.1f} | {r['end_to_end_ms']:.0f} | {r['end_to_end_ms_speedup']:.2f} |"
        )
    if report.get("benchmark_app"):
        lines += ["", "benchmark_app (-hint latency, -ip f32, pinned -infer_precision, static -shape; median of the JSON report):", ""]
        lines += ["| IR | precision (effective) | median ms | throughput FPS |", "| --- | --- | --- | --- |"]
        for r in report["benchmark_app"]:
            lines.append(
                f"| {r['model']} | {r['precision']} ({r.get('inference_precision_hint', '?')}) | {r['median_ms']:.2f} | {r['throughput_fps']:.2f} |"
            )
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Bar chart of encoder and set_image + click latency per variant, annotated with speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["pipeline"]["results"]
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2))
    for ax, key, title in ((axes[0], "encoder_ms", "encoder"), (axes[1], "end_to_end_ms", "set_image + one click")):
        values = [results[n][key] for n in names]
        bars = ax.barh(names, values, color=["#888888"] + ["#1f77b4"] * (len(names) - 1))
        for bar, n in zip(bars, names):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {results[n][key]:.0f} ms ({results[n][key + '_speedup']:.1f}x)",
                va="center",
            )
        ax.set_title(f"{title} latency, lower is better")
        ax.set_xlabel("ms (median)")
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.45)
    axes[1].set_yticklabels([])
    fig.suptitle(f"TinySAM on {report['cpu']} ({report['cores']} cores, {report['device']})")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def everything_bench(
    model_dirs: dict[str, Path],
    image: np.ndarray,
    precisions: tuple[str, ...] = ("f32", "bf16"),
    rounds: int = 2,
    device: str = "CPU",
    generator_options: dict | None = None,
    log=print,
) -> dict:
    """Hierarchical vs 32x32-grid everything mode per OpenVINO variant (plain and split decoder), interleaved.

    Every variant and mode runs once untimed first (it compiles the decoder shapes it meets). Reports
    median seconds per stage (encoder, decoder, upscaling + filters, NMS + output), the prompts each
    mode decoded, those decoded with masks, the masks upscaled and returned, and grid/hierarchical.
    """
    options = generator_options or {}
    grid_options = {k: v for k, v in options.items() if k != "high_score_thresh"}
    generators = {}
    for label, folder in model_dirs.items():
        for name, predictor in openvino_variants(folder, device, precisions, label, plain_too=True).items():
            generators[f"{name} | hierarchical"] = HierarchicalMaskGenerator(predictor, **options)
            generators[f"{name} | grid"] = MaskGenerator(predictor, **grid_options)

    def run(name: str) -> dict[str, float]:
        generator = generators[name]
        start = time.perf_counter()
        masks = generator.generate(image)
        total = time.perf_counter() - start
        stats = generator.stats
        counts = {
            k: sum(stats[s][k] for s in ("grid", "stage1", "stage2") if s in stats)
            for k in ("prompts", "prompts_with_masks", "masks_upscaled")
        }
        log(f"{name}: {total:.1f} s, {counts['prompts']} prompts, {len(masks)} masks")
        seconds = {f"{k}_s": v for k, v in stats["seconds"].items()}
        return {
            "total_s": total,
            **seconds,
            **counts,
            "decoder_ms_per_prompt": 1000 * seconds["decoder_s"] / max(1, counts["prompts"]),
            "masks": len(masks),
        }

    for name in generators:
        run(name)
    report = interleaved_rounds(list(generators), run, rounds, log)
    results: dict[str, dict] = {}
    for name, result in report.pop("results").items():
        variant, mode = name.split(" | ")
        results.setdefault(variant, {})[mode] = result
    for modes in results.values():
        modes["grid_over_hierarchical"] = modes["grid"]["total_s"] / modes["hierarchical"]["total_s"]
    return {**environment(device), **report, "image_hw": list(image.shape[:2]), "options": options, "results": results}


def format_everything(report: dict) -> str:
    """A Markdown table of an ``everything_bench`` report."""
    h, w = report["image_hw"]
    lines = [
        f"everything mode on a {w}x{h} image, {report['cpu']}, {report['cores']} cores; options {report['options']};"
        f" medians of {report['clean_rounds']}/{report['rounds']} clean rounds after a warm-up run"
        + (" (CONTENDED: numbers are noisy)" if report["contended"] else ""),
        "",
        (
            "| variant | mode | total s | encoder s | decoder s | decoder ms / prompt | upscale + filters s | NMS + output s | prompts"
            " | prompts with masks | masks upscaled | masks | grid / hierarchical |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, modes in report["results"].items():
        for mode in ("hierarchical", "grid"):
            r = modes[mode]
            ratio = f"{modes['grid_over_hierarchical']:.2f}x" if mode == "hierarchical" else ""
            lines.append(
                f"| {name} | {mode} | {r['total_s']:.2f} | {r['encoder_s']:.2f} | {r['decoder_s']:.2f} | {r['decoder_ms_per_prompt']:.1f}"
                f" | {r['upscale_and_filter_s']:.2f} | {r['nms_and_output_s']:.2f} | {r['prompts']:.0f} | {r['prompts_with_masks']:.0f}"
                f" | {r['masks_upscaled']:.0f} | {r['masks']:.0f} | {ratio} |"
            )
    return "\n".join(lines)
