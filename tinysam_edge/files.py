"""Writing files so that a reader (or an interrupted run) never sees a partial one, and checking early that they can be written."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import TinySamError


def temp_path(path: str | Path) -> Path:
    """The hidden sibling ``.NAME.tmp`` that ``atomic_write`` writes ``path`` through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` to write to; it replaces ``path`` only when the block succeeds."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically, creating its folder (a crash leaves the old file or none, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def check_writable(path: str | Path) -> None:
    """Raise TinySamError unless ``path`` (a file, or a folder to create) can be written, before any slow work.

    The nearest existing ancestor must be a writable folder; where the parent exists, the temporary
    file of ``atomic_write`` is created and removed, which also catches read-only mounts and names
    that are too long (a permission check alone passes everything for root).
    """
    given = Path(path)
    path = Path(os.path.abspath(given))  # "." and ".." have no name to put a temp file beside
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    shown = existing if given.is_absolute() else os.path.relpath(existing)
    if not existing.is_dir():
        raise TinySamError(f"cannot write {given}: {shown} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TinySamError(f"cannot write {given}: folder {shown} is not writable")
    if existing != parent or not path.name:
        return
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # a leftover of an interrupted run: the name is writable, atomic_write replaces it
        return
    except OSError as exc:
        raise TinySamError(f"cannot write {given}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp.unlink()
