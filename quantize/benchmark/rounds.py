"""Timing infrastructure shared by the benchmarks: interleaved rounds, the foreign load during them, and the run header."""

import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import openvino as ov
import torch

from tinysam_edge import __version__
from tinysam_edge.devices import cpu_name


class ForeignLoad:
    """Cores' worth of CPU time used by *other* processes during a block (Linux; 0 elsewhere)."""

    def __enter__(self) -> "ForeignLoad":  # noqa: PYI034 - typing.Self needs Python 3.11
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


def interleaved_rounds(names: list[str], run: Callable[[str], dict[str, float]], rounds: int, log=print) -> dict:
    """Run every variant once per round, rotating the order, and take medians over the clean rounds.

    A round is clean when other processes used under 0.25 cores during it; when none is, all rounds
    count and the report says ``contended``.
    """
    samples: dict[str, list[dict]] = {name: [] for name in names}
    loads = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        with ForeignLoad() as load:
            round_results = {name: run(name) for name in order}
        loads.append(load.cores)
        for name, result in round_results.items():
            samples[name].append(result)
        log(f"round {r + 1}/{rounds}: foreign load {load.cores:.2f} cores")
    clean = [i for i, c in enumerate(loads) if c < 0.25]
    kept = clean or list(range(rounds))
    results = {name: {k: statistics.median(s[i][k] for i in kept) for k in s[0]} for name, s in samples.items()}
    return {"rounds": rounds, "clean_rounds": len(clean), "contended": not clean, "foreign_load_cores": loads, "results": results}


def environment(device: str) -> dict:
    """The machine, device and library versions a report was measured with."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "device": device,
        "versions": {
            "tinysam_edge": __version__,
            "openvino": ov.get_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }


def run_header(report: dict, rounds: dict) -> str:
    """One line: machine, versions and how many of the ``interleaved_rounds`` were clean."""
    return (
        f"{report['cpu']}, {report['cores']} cores, device {report['device']}; openvino {report['versions']['openvino']}, torch {report['versions']['torch']};"
        f" {rounds['clean_rounds']}/{rounds['rounds']} clean rounds" + (" (CONTENDED: numbers are noisy)" if rounds["contended"] else "")
    )
