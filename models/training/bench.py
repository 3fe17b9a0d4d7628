"""``tinysam-edge train bench``: where the time of a distillation step goes, on CUDA or on the CPU.

Runs a config's real training steps (its loader with images and cached embeddings read from disk
every epoch, the full step, the optimizer) into a temporary folder and reports images/s, objects/s,
the step split (waiting for data, corrective loop, forward + backward, optimizer), how busy the
device was, peak memory and host-device synchronisations per step. On CUDA the phases are timed
with CUDA events and synchronisations counted by ``torch.cuda.set_sync_debug_mode``; on the CPU
with the wall clock and a dispatch hook that counts the ops that would synchronise.
"""

import dataclasses
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tinysam_edge.devices import cpu_name

from .config import DistillConfig
from .devices import training_device
from .distill import Distiller, load_training_data
from .step import PhaseMarks

#: Ops after which the host has waited for the device (``.item()``, ``int()``, ``bool()`` reach ``_local_scalar_dense``).
SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.item")


class SyncCounter(TorchDispatchMode):
    """Counts dispatched ops that make the host wait for the device, boolean-mask indexing included."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        indices = args[1] if name in ("aten.index", "aten.index_put", "aten.index_put_") and len(args) > 1 else ()
        if name.startswith(SYNC_OPS) or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


class TimedMarks(PhaseMarks):
    """Phase marks of each step: CUDA events on CUDA (read once at the end), wall-clock times on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps: list[dict[str, object]] = [{}]
        self.syncs: list = []  # the sync counter's list: its length is noted at each mark
        self.sync_marks: list[dict[str, int]] = [{}]

    def mark(self, name: str) -> None:
        self.sync_marks[-1][name] = len(self.syncs)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1][name] = event
        else:
            self.steps[-1][name] = time.perf_counter()

    def next_step(self) -> None:
        """Start the marks of another step."""
        self.steps.append({})
        self.sync_marks.append({})

    def optimizer_syncs(self) -> int:
        """Synchronisations counted between ``backward_end`` and ``optimizer_end``, over all steps."""
        return sum(m["optimizer_end"] - m["backward_end"] for m in self.sync_marks if "optimizer_end" in m)

    def seconds(self, step: dict, a: str, b: str) -> float:
        if a not in step or b not in step:
            return 0.0
        return step[a].elapsed_time(step[b]) / 1000 if self.cuda else step[b] - step[a]

    def split(self) -> dict[str, float]:
        """Mean seconds per step of the corrective loop, forward + backward (loop excluded) and the optimizer."""
        if self.cuda:
            torch.cuda.synchronize()
        steps = [s for s in self.steps if s]
        loop = sum(self.seconds(s, "loop_start", "loop_end") for s in steps)
        fwd_bwd = sum(self.seconds(s, "start", "backward_end") for s in steps) - loop
        optimizer = sum(self.seconds(s, "backward_end", "optimizer_end") for s in steps)
        return {"loop_s": loop / len(steps), "fwd_bwd_s": fwd_bwd / len(steps), "optimizer_s": optimizer / len(steps)}


class GpuBusy:
    """``nvidia-smi`` utilisation samples (every 200 ms) of one GPU in a background thread; ``mean()`` when stopped."""

    def __init__(self, index: int) -> None:
        self.samples: list[float] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index), "-lms", "200"]
            self.proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def mean(self) -> float | None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        return sum(self.samples) / len(self.samples) if self.samples else None


@contextmanager
def count_syncs(device: torch.device) -> Iterator[list]:
    """Collect one entry per host-device synchronisation inside the block (see the module docstring)."""
    if device.type != "cuda":
        with SyncCounter() as counter:
            yield counter.ops
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def _batches(distiller: Distiller) -> Iterator[dict]:
    """The loader's batches across epochs, as training sees them (workers stay alive, every epoch from disk)."""
    epoch = 0
    while True:
        distiller.data.loader.sampler.set_epoch(epoch)
        yield from distiller.data.loader
        epoch += 1


def run_bench(config: DistillConfig, steps: int, warmup: int, log: Callable[[str], None] = print) -> dict[str, object]:
    """Train ``warmup`` + ``steps`` steps of ``config`` in a temporary folder; the figures of the last ``steps``."""
    device = training_device(config.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(config.run.seed)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, out=tmp))
        distiller = Distiller(config, load_training_data(config, pin_memory=device.type == "cuda"), device, 0, 1, log)
        marks = TimedMarks(device)
        distiller.marks = distiller.step_module.marks = marks
        batches = _batches(distiller)
        wait = images = objects = 0.0
        syncs: list = []
        for i in range(warmup + steps):
            if i == warmup:  # the measured window starts
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                busy = GpuBusy(device.index or 0) if device.type == "cuda" else None
                marks.steps, marks.sync_marks, wait, images, objects = [{}], [{}], 0.0, 0, 0
                syncs = marks.syncs = stack.enter_context(count_syncs(device))
                cpu0, tic = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            t0 = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t0
            images, objects = images + len(batch["key"]), objects + batch["masks"].shape[0]
            distiller.update(batch)
            marks.next_step()
        split = marks.split()
        wall = time.perf_counter() - tic
        stack.close()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_busy = 100 * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall / torch.get_num_threads()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_name()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": str(distiller.amp).replace("torch.", "") if distiller.amp else "off",
        "batch": f"{config.optim.batch_size} images x up to {config.data.max_masks} objects, "
        f"{config.sampler.min_iterations}..{config.sampler.max_iterations} corrective points, {config.data.num_workers} loader workers",
        "steps": steps,
        "images_per_s": images / wall,
        "objects_per_s": objects / wall,
        "steps_per_s": steps / wall,
        "data_wait_s": wait / steps,
        **split,
        "busy_percent": busy.mean() if busy is not None else cpu_busy,
        "busy_of": "GPU (nvidia-smi)" if device.type == "cuda" else "CPU threads (process time / wall / torch threads)",
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else cpu1.ru_maxrss / 2**20,
        # the CPU count leaves out the optimizer: AdamW reads its per-parameter step counters, CPU scalars even on CUDA
        "syncs_per_step": (len(syncs) - marks.optimizer_syncs()) / steps
        if device.type != "cuda"
        else len([s for s in syncs if "synchroniz" in str(s.message)]) / steps,
    }


def format_bench(result: dict[str, object]) -> str:
    """The bench figures as a Markdown table (milliseconds for the step split)."""
    rows = [
        ("device", result["device"]),
        ("torch / threads / amp", f"{result['torch']} / {result['threads']} / {result['amp']}"),
        ("batch", result["batch"]),
        ("measured steps", result["steps"]),
        ("images/s", f"{result['images_per_s']:.2f}"),
        ("objects/s", f"{result['objects_per_s']:.1f}"),
        ("steps/s", f"{result['steps_per_s']:.3f}"),
        ("data wait / step", f"{1000 * result['data_wait_s']:.0f} ms"),
        ("corrective loop / step", f"{1000 * result['loop_s']:.0f} ms"),
        ("forward + backward / step", f"{1000 * result['fwd_bwd_s']:.0f} ms"),
        ("optimizer / step", f"{1000 * result['optimizer_s']:.0f} ms"),
        (f"busy ({result['busy_of']})", "n/a" if result["busy_percent"] is None else f"{result['busy_percent']:.0f} %"),
        ("peak memory", f"{result['peak_memory_gb']:.2f} GB"),
        (
            "host-device syncs / step" + (" (optimizer's CPU scalars left out)" if result["device"].startswith("CPU") else ""),
            f"{result['syncs_per_step']:.1f}",
        ),
    ]
    return "\n".join(["| train bench | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])
