"""Where commands write: output files and folders checked before any slow work, and progress notes on stderr."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import TinySamError
from ..files import check_writable, resolve_path
from ..image import IMAGE_SUFFIXES


def _clashes(target: Path, inputs: Sequence[Path | str | None]) -> Path | None:
    """The first input that ``target`` is (symlinks resolved, hard links compared by inode)."""
    resolved = resolve_path(target)
    for source in (Path(p) for p in inputs if p is not None):
        if resolve_path(source) == resolved:
            return source
        if target.exists() and source.exists() and os.path.samefile(target, source):
            return source
    return None


def check_output(
    path: Path | None, overwrite: bool, inputs: Sequence[Path | str | None], suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> None:
    """Refuse an output file with the wrong type, one that is an input, a folder, not writable, or existing without ``overwrite``.

    Every command calls this on every output file before any slow work; ``--overwrite`` never lets
    an output replace an input.
    """
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise TinySamError(f"{path}: unsupported output type {path.suffix!r}; use one of {', '.join(suffixes)}")
    clash = _clashes(path, inputs)
    if clash is not None:
        raise TinySamError(f"{path} is the input {clash}; refusing to overwrite an input")
    if path.is_dir():
        raise TinySamError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise TinySamError(f"{path} exists; pass --overwrite to replace it")
    check_writable(path)


def check_output_dir(path: Path, inputs: Sequence[Path | str | None]) -> None:
    """Refuse a folder a command writes its own named files into when it is an input, is a file, or cannot be created.

    Each file written there is checked with ``check_output``; the folder itself is never removed. A
    folder replaced as a whole (a model dir) is checked with ``files.check_replaceable`` instead.
    """
    clash = _clashes(path, inputs)
    if clash is not None:
        raise TinySamError(f"output folder {path} is or holds the input {clash}; choose another folder")
    if path.exists() and not path.is_dir():
        raise TinySamError(f"{path} is a file, not a folder")
    check_writable(path)


def log(message: str) -> None:
    """Progress and notes go to stderr, results to stdout."""
    print(message, file=sys.stderr)
