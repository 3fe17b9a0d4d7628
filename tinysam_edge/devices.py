"""OpenVINO devices: checking what is asked for against what is there, and the compile configuration."""

import functools
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openvino as ov

from .errors import DeviceError, error_cause
from .paths import cache_dir

PRECISIONS = ("f32", "bf16", "f16")
#: Devices that only run (NPU) or prefer (GPU) static shapes; AUTO may pick either.
STATIC_DEVICES = ("GPU", "NPU", "AUTO")


def device_family(device: str) -> str:
    """``GPU.1`` -> ``GPU``; ``AUTO:GPU,CPU`` -> ``AUTO``."""
    return device.split(":")[0].split(".")[0].upper()


@functools.cache
def shared_core() -> ov.Core:
    """The process's one ``ov.Core``, kept for its lifetime.

    Every Core loads its own CPU plugin, and each CPU plugin gives the loading thread a new alternate signal
    stack, puts the one it found back when it is unloaded (if its own is still current) and unmaps its own.
    Two plugins unloaded in the order they were loaded leave the thread on an unmapped stack, and the next
    signal Python handles there (Ctrl-C, SIGTERM, SIGCHLD) kills the process with SIGSEGV
    (docs/repro/openvino_altstack.py). One Core that is never unloaded cannot do that.
    """
    return ov.Core()


def check_device(core: ov.Core, device: str) -> None:
    """Raise DeviceError naming the available devices when ``device`` cannot be used here."""
    family = device_family(device)
    if family in ("AUTO", "HETERO", "MULTI"):
        return
    if device.upper() == "CPU":
        try:  # loads the CPU plugin alone; listing every device would load (and keep) every plugin, about 10 MB
            core.get_versions("CPU")
            return
        except RuntimeError:
            pass
    available = core.available_devices
    if family not in ("CPU", "GPU", "NPU"):
        raise DeviceError(f"unknown device {device!r}; use CPU, GPU, NPU or AUTO (available here: {', '.join(available)})")
    if device.upper() not in available and not (device.upper() == family and any(d.startswith(family) for d in available)):
        raise DeviceError(
            f"device {device!r} is not available on this machine (available: {', '.join(available)}); check its driver or pick another"
        )


def check_count(name: str, value: object) -> None:
    """TypeError unless ``value`` is None or an int (not a bool), ValueError if it is below 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def compile_config(
    device: str,
    precision: str | None = None,
    num_threads: int | None = None,
    cache: str | os.PathLike | None = None,
    streams: int = 1,
) -> dict[str, str]:
    """Properties for ``compile_model``: streams, CACHE_DIR and an explicit inference precision.

    ``precision=None`` means f32 on CPU and GPU (the CPU plugin would otherwise pick bf16 on CPUs
    with avx512_bf16, the GPU plugin f16); NPU keeps its own (it computes in f16). ``streams`` is the
    number of requests that run at once: 1 is the latency hint (one request uses every thread); more
    split ``num_threads`` (default: all cores) between that many CPU/GPU streams, or ask other devices
    for throughput.
    """
    family = device_family(device)
    if precision is not None and precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    check_count("num_threads", num_threads)
    check_count("streams", streams)
    if precision is None and family in ("CPU", "GPU"):
        precision = "f32"
    # One cache folder per device and precision: OpenVINO 2026.4's CPU plugin gives an f32 and a bf16
    # compilation of a model the same cache key, and running the wrong blob crashes the process
    # (docs/openvino_cache_bug.md).
    base = Path(cache) if cache is not None else cache_dir() / "ov-cache"
    folder = base / f"{family.lower()}-{precision or 'default'}"
    config = {"PERFORMANCE_HINT": "LATENCY"} | ({"CACHE_DIR": str(folder)} if usable_cache_dir(folder) else {})
    if streams > 1:
        config |= {"NUM_STREAMS": str(streams)} if family in ("CPU", "GPU") else {"PERFORMANCE_HINT": "THROUGHPUT"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if num_threads is not None:
        if family != "CPU":
            raise DeviceError("num_threads applies to the CPU device only")
        config["INFERENCE_NUM_THREADS"] = str(num_threads)
    return config


_warned_cache_dirs: set[str] = set()


def usable_cache_dir(folder: Path) -> bool:
    """Whether compiled blobs can be cached in ``folder`` (created if needed).

    The cache only saves compile time: where the folder cannot be created or written (a read-only
    ``TINYSAM_EDGE_HOME``), models compile without it and a warning says so, once per folder.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError as exc:
        if str(folder) not in _warned_cache_dirs:
            _warned_cache_dirs.add(str(folder))
            warnings.warn(
                f"cannot use the compiled-model cache {folder} ({exc.strerror or exc}); compiling without it", RuntimeWarning, stacklevel=3
            )
        return False


_COMPILING = threading.Lock()


@contextmanager
def cache_lock(config: dict[str, str]) -> Iterator[None]:
    """One compilation at a time per compiled-model cache: OpenVINO's CACHE_DIR is not safe for concurrent writers
    (two compilations of one graph race on its blob and one fails). A thread lock, plus a file lock in the cache
    folder for other processes where ``fcntl`` exists; without CACHE_DIR only the thread lock."""
    with _COMPILING:
        handle = None
        if "CACHE_DIR" in config:
            try:
                import fcntl

                handle = (Path(config["CACHE_DIR"]) / ".compile.lock").open("a")
            except (ImportError, OSError):
                pass
        if handle is None:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
            yield


def compile_model(core: ov.Core, model: ov.Model | str, device: str, config: dict[str, str]) -> ov.CompiledModel:
    """``core.compile_model`` under ``cache_lock``, with device/setting errors turned into one-line DeviceErrors."""
    try:
        with cache_lock(config):
            return core.compile_model(model, device, config)
    except RuntimeError as exc:
        raise DeviceError(f"cannot compile for {device} with {config}: {error_cause(exc)}") from exc


def describe(compiled: ov.CompiledModel) -> tuple[str, str]:
    """(execution devices, inference precision) that a compiled model actually uses."""
    try:
        devices = ",".join(compiled.get_property("EXECUTION_DEVICES"))
    except RuntimeError:
        devices = "unknown"
    try:
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:
        precision = "device default"
    return devices, precision


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows), to print next to every timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
