"""Running OpenVINO's own ``benchmark_app`` (shipped in the openvino wheel) and reading its reports."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tinysam_edge.errors import TinySamError

_UNITS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
_LATENCY = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([\d.]+)\s*(ns|us|ms|s)\s*$", re.MULTILINE)
_SETTING = re.compile(
    r"^\[ INFO \]\s+(INFERENCE_PRECISION_HINT|NUM_STREAMS|PERFORMANCE_HINT|INFERENCE_NUM_THREADS):\s+(.+?)\s*$", re.MULTILINE
)


def parse_report(report: dict) -> dict[str, float]:
    """Numbers from ``benchmark_report.json`` (``-json_stats``): latencies in ms, throughput in FPS."""
    results = report["execution_results"]
    keys = {
        "median_ms": "latency (ms)",
        "avg_ms": "avg latency",
        "min_ms": "min latency",
        "max_ms": "max latency",
        "throughput_fps": "throughput",
    }
    parsed = {name: float(results[key]) for name, key in keys.items()}
    parsed["iterations"] = int(results["total number of iterations"])
    parsed["compile_ms"] = float(results["compile model time (ms)"])
    return parsed


def parse_stdout(text: str) -> dict:
    """Latencies (converted to ms from whatever unit was printed: us below 1 ms) and effective settings."""
    parsed: dict = {
        f"{name.lower()}_ms".replace("average", "avg"): float(value) * _UNITS[unit] for name, value, unit in _LATENCY.findall(text)
    }
    for key, value in _SETTING.findall(text):
        parsed[key.lower()] = re.sub(r"<Type: '(\w+)'>", r"\1", value)
    return parsed


def merge(report: dict, stdout: str) -> dict:
    """The JSON report's numbers with the effective settings from stdout.

    The JSON rounds latencies to 0.01 ms, so sub-millisecond ones are taken from stdout, which
    prints them in microseconds.
    """
    result = parse_report(report)
    printed = parse_stdout(stdout)
    if result["median_ms"] < 1.0:
        result.update({k: v for k, v in printed.items() if k.endswith("_ms")})
    result.update({k: v for k, v in printed.items() if not k.endswith("_ms")})
    return result


def benchmark_app_command() -> list[str]:
    """How to start benchmark_app: the console script beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("benchmark_app")
    found = str(beside) if beside.exists() else shutil.which("benchmark_app")
    if found is None:
        raise TinySamError("benchmark_app not found; it ships with the openvino wheel (pip install openvino)")
    return [found]


def run_benchmark_app(xml: str | Path, device: str, shapes: dict[str, list[int]], precision: str | None, seconds: int = 10) -> dict:
    """Latency of one IR with ``-hint latency -ip f32``, pinned ``-infer_precision`` and static ``-shape``."""
    shape_arg = ",".join(f"{name}[{','.join(map(str, dims))}]" for name, dims in shapes.items())
    with tempfile.TemporaryDirectory() as report_dir:
        cmd = benchmark_app_command() + [
            "-m",
            str(xml),
            "-d",
            device,
            "-hint",
            "latency",
            "-ip",
            "f32",
            "-t",
            str(seconds),
            "-shape",
            shape_arg,
        ]
        cmd += ["-report_type", "no_counters", "-json_stats", "-report_folder", report_dir]
        if precision is not None:
            cmd += ["-infer_precision", f"{device}:{precision}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # a failure is reported below, with its output
        report_path = Path(report_dir) / "benchmark_report.json"
        if proc.returncode != 0 or not report_path.is_file():
            errors = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "ERROR" in line or "Error" in line]
            raise TinySamError(f"benchmark_app failed on {xml}: {errors[-1] if errors else proc.returncode}")
        result = merge(json.loads(report_path.read_text()), proc.stdout)
    result["command"] = " ".join(cmd[1:]).replace(report_dir, "REPORT_DIR")
    return result
