"""Shared Ray plumbing (``--engine ray`` of ``label`` and ``train cache-teacher``): import Ray lazily and start or join a cluster.

Torch-free and ray-free at import time: Ray is imported only inside ``import_ray``, so everything
works without the ``[scale]`` extra until a Ray engine is asked for.
"""

import logging
import math
import os

from .errors import TinySamError


def import_ray():
    """The ``ray`` module with Ray Data loaded, or one ``TinySamError`` naming the extra to install."""
    # our progress bar and summary replace Ray Data's per-dataset notes (RAY_DATA_LOG_LEVEL=INFO brings them back)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    try:
        import ray
        import ray.data  # configures its logging from the variable above
    except ImportError as exc:
        raise TinySamError(f"--engine ray needs Ray ({exc}); install it with: pip install 'tinysam-edge[scale]'") from exc
    return ray


def init_ray(ray, address: str | None, cpus: float) -> bool:
    """Connect to ``address`` or start a local Ray with at least ``cpus`` logical CPUs; True if this call started it."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        options["num_cpus"] = max(os.cpu_count() or 1, math.ceil(cpus))
    ray.init(address=address, **options)
    return True
