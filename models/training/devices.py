"""Where a training run executes: the torch device, its autocast dtype and the ``torchrun`` environment."""

import os

import torch

from tinysam_edge.errors import TinySamError

TRAINING_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _backend_available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "mps":
        return torch.backends.mps.is_available()
    backend = getattr(torch, kind, None)  # torch.cuda, torch.xpu
    return backend is not None and backend.is_available()


def _device_count(kind: str) -> int:
    return getattr(torch, kind).device_count() if kind in ("cuda", "xpu") else 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else the CPU; else one of ``TRAINING_DEVICES`` that exists here.

    ``cuda`` and ``xpu`` without an index take this process's ``local_rank`` (``torchrun``'s LOCAL_RANK;
    0 alone). Anything else (an unknown name, an absent backend, ``cuda:3`` on a one-GPU machine) is one
    ``TinySamError``.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in TRAINING_DEVICES:
        raise TinySamError(f"unknown training device {name!r}: use auto, cpu, cuda, cuda:N, xpu, xpu:N or mps")
    if not _backend_available(device.type):
        raise TinySamError(f"device {name} requested but {device.type} is not available here (use 'auto' or 'cpu')")
    if device.index is None and device.type in ("cuda", "xpu"):
        device = torch.device(device.type, local_rank)  # autocast, DDP and set_device need an index
    if device.index is not None and device.index >= _device_count(device.type):
        raise TinySamError(f"device {device} requested but this machine has {_device_count(device.type)} {device.type} device(s)")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``run.amp``: auto is bf16 on CUDA (fp16 where bf16 is unsupported) and off on the CPU."""
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if mode not in choices:
        raise ValueError(f"run.amp must be auto, bf16, fp16 or off, got {mode!r}")
    if choices[mode] is torch.float16 and device.type != "cuda":
        raise ValueError("run.amp = 'fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
    return choices[mode]


def dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as ``torchrun`` sets them; (0, 0, 1) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def training_device(name: str) -> torch.device:
    """``resolve_device`` for this process: under ``torchrun`` an index-less ``cuda`` is the local rank's GPU."""
    return resolve_device(name, dist_env()[1])
