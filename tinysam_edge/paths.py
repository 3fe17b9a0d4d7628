"""Where tinysam-edge keeps its files: the cache root (weights, exported model dirs, compiled-model blobs)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$TINYSAM_EDGE_HOME`` or ``$XDG_CACHE_HOME/tinysam-edge`` (default ~/.cache)."""
    if os.environ.get("TINYSAM_EDGE_HOME"):
        return Path(os.environ["TINYSAM_EDGE_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tinysam-edge"
