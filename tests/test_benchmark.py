"""benchmark_app report parsing on recorded outputs, and the bench command in a tiny configuration."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysam_edge.quantize.benchmark.benchmark_app import merge, parse_report, parse_stdout

DATA = Path(__file__).parent / "data" / "benchmark_app"


def test_parses_microsecond_latencies():
    """Sub-millisecond runs print 'us'; the JSON report rounds them to 0.01 ms, so stdout wins."""
    stdout = (DATA / "tiny_us_stdout.txt").read_text()
    printed = parse_stdout(stdout)
    assert printed["median_ms"] == pytest.approx(8.08e-3) and printed["max_ms"] == pytest.approx(140.39e-3)
    report = json.loads((DATA / "tiny_us_report.json").read_text())
    assert parse_report(report)["median_ms"] == 0.01
    merged = merge(report, stdout)
    assert merged["median_ms"] == pytest.approx(8.08e-3) and merged["iterations"] == 65043
    assert merged["inference_precision_hint"] == "float32" and merged["performance_hint"] == "LATENCY"


def test_parses_millisecond_latencies():
    stdout = (DATA / "decoder_ms_stdout.txt").read_text()
    report = json.loads((DATA / "decoder_ms_report.json").read_text())
    merged = merge(report, stdout)
    assert merged["median_ms"] == 23.8 and merged["avg_ms"] == 24.05 and merged["throughput_fps"] == 41.05
    assert parse_stdout(stdout)["median_ms"] == pytest.approx(23.8)
    assert merged["num_streams"] == "1" and merged["compile_ms"] == 304.61


def test_bench_tiny_configuration(random_model_dir, random_checkpoint, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "tinysam_edge", "bench", "--model-dir", str(random_model_dir), "--checkpoint", str(random_checkpoint)]
    cmd += ["--rounds", "1", "--seconds", "1", "--out-dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    apps = {(r["model"], r["precision"]): r for r in report["benchmark_app"]}
    assert set(apps) == {
        ("fp32-IR encoder", "f32"),
        ("fp32-IR encoder", "bf16"),
        ("fp32-IR decoder, 1 click", "f32"),
        ("fp32-IR decoder, 64 prompts", "f32"),
    }
    assert apps[("fp32-IR encoder", "f32")]["inference_precision_hint"] == "float32"
    assert all(r["median_ms"] > 0 and r["performance_hint"] == "LATENCY" for r in apps.values())
    results = report["pipeline"]["results"]
    assert next(iter(results)) == "torch eager f32" and len(results) == 3
    assert all(r["end_to_end_ms"] > 0 and r["encoder_ms_speedup"] > 0 for r in results.values())
    assert (out / "bench.png").stat().st_size > 1000 and "| torch eager f32 |" in (out / "bench.md").read_text()


def test_everything_bench_reports_both_decoders_and_modes(random_model_dir):
    from tinysam_edge.quantize.benchmark.pipeline import everything_bench, format_everything

    image = np.random.default_rng(9).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    options = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0, "stability_score_thresh": 0}
    report = everything_bench(
        {"fp32-IR": random_model_dir}, image, precisions=("f32",), rounds=1, generator_options=options, log=lambda *_: None
    )
    assert set(report["results"]) == {"openvino fp32-IR f32 (CPU, plain decoder)", "openvino fp32-IR f32 (CPU, split decoder)"}
    for modes in report["results"].values():
        assert modes["grid"]["prompts"] == 16 and modes["hierarchical"]["prompts"] >= 1
        assert modes["grid"]["prompts_with_masks"] == 16 and modes["grid"]["decoder_ms_per_prompt"] > 0
    assert report["rounds"] == 1 and "| openvino fp32-IR f32 (CPU, split decoder) | hierarchical |" in format_everything(report)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], ("f32", "bf16")),
        (["--precision", "bf16"], ("bf16",)),
        (["--precision", "f16", "--precision", "f32"], ("f16", "f32")),
        (["--int8-dir", "INT8"], ("f32", "bf16")),
    ],
)
def test_bench_times_the_precisions_and_dirs_asked_for(flags, expected, random_model_dir, tmp_path, monkeypatch):
    """``bench --quick`` times the precisions of ``--precision`` and the ``--int8-dir`` (each was once accepted and ignored)."""
    from tinysam_edge.cli import main
    from tinysam_edge.quantize.benchmark import pipeline

    seen = {}
    flags = [str(random_model_dir) if flag == "INT8" else flag for flag in flags]

    def fake_quick_bench(model_dir, int8_dir, checkpoint, **kwargs):
        seen.update(kwargs, int8_dir=int8_dir)
        return {}

    monkeypatch.setattr(pipeline, "quick_bench", fake_quick_bench)
    monkeypatch.setattr(pipeline, "format_tables", lambda report: "table")
    monkeypatch.setattr(pipeline, "plot", lambda report, path: None)
    assert main(["bench", "--quick", "--model-dir", str(random_model_dir), "--out-dir", str(tmp_path / "out"), *flags]) == 0
    assert seen["precisions"] == expected
    assert seen["int8_dir"] == (random_model_dir if "--int8-dir" in flags else None)
