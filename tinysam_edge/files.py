"""Writing files so that a reader (or an interrupted run) never sees a partial one, and checking early that they can be written."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import TinySamError
from .paths import cache_dir


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


def resolve_path(path: str | Path) -> Path:
    """``path`` absolute with symlinks resolved; a symlink loop is a one-line TinySamError."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise TinySamError(f"cannot resolve {path}: {getattr(exc, 'strerror', None) or 'symlink loop'}") from exc


def _is_or_holds(target: Path, path: Path | str) -> bool:
    """Whether the resolved ``target`` is ``path`` (resolved) or a folder above it."""
    real = resolve_path(path)
    return target == real or target in real.parents


def model_dir_files(folder: Path) -> set[str] | None:
    """The names a model dir this tool wrote consists of (its manifest, the listed .xml and their .bin; or an ONNX
    export's config.json and listed .onnx files), or None without such a record of ours."""
    from .manifest import FORMAT, MANIFEST_FILE, ONNX_CONFIG_FILE, ONNX_FORMAT

    for record, kind in ((MANIFEST_FILE, FORMAT), (ONNX_CONFIG_FILE, ONNX_FORMAT)):
        try:
            data = json.loads((folder / record).read_text())
            listed = [str(name) for name in data["files"].values()] if data.get("format") == kind else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no, unreadable or malformed record
            continue
        if listed is not None:
            names = {record, *listed, *(str(Path(name).with_suffix(".bin")) for name in listed if name.endswith(".xml"))}
            return {name for name in names if Path(name).name == name}  # plain names only: a record never points outside
    return None


def foreign_entry(folder: Path) -> str | None:
    """The first entry (by name) of an existing ``folder`` that is not a file of the model dir it holds; None if there is none."""
    own = model_dir_files(folder) or set()
    for entry in sorted(folder.iterdir()):
        if entry.name not in own or entry.is_symlink() or not entry.is_file():
            return entry.name
    return None


def check_replaceable(path: str | Path, inputs: Sequence[Path | str | None], overwrite: bool) -> Path:
    """Refuse ``path`` as a model dir to (re)write, before any slow work; returns it resolved.

    Refused: a file; the working folder, the home folder, the weights cache root, an input, or a
    folder holding any of them; a folder holding anything but the files of a model dir this tool
    wrote (the first such entry is named); and an existing model dir without ``overwrite``.
    """
    target = resolve_path(path)
    clash = next((p for p in inputs if p is not None and _is_or_holds(target, p)), None)
    if clash is not None:
        raise TinySamError(f"output folder {path} is or holds the input {clash}; choose another folder")
    if target.exists() and not target.is_dir():
        raise TinySamError(f"{path} is a file, not a folder")
    homes = [("the working folder", Path.cwd()), ("the home folder", Path.home()), ("the weights cache", cache_dir())]
    held = next((what for what, folder in homes if _is_or_holds(target, folder)), None)
    if held is not None:
        raise TinySamError(f"output folder {path} is or holds {held}, which a model dir never replaces; choose a folder of its own")
    if target.is_dir():
        entry = foreign_entry(target)
        if entry is not None:
            raise TinySamError(
                f"{path} holds {entry}, which is not part of a tinysam-edge model dir; --overwrite replaces only a model dir: choose another folder"
            )
        if not overwrite and any(target.iterdir()):
            raise TinySamError(f"{path} exists and is not empty; pass --overwrite to replace it")
    check_writable(target)
    return target


def _remove_model_dir(folder: Path) -> None:
    """Delete the files of a replaced model dir (the manifest last), then the folder; a folder holding more is kept."""
    from .manifest import MANIFEST_FILE

    own = model_dir_files(folder) or set()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name == MANIFEST_FILE):
        if entry.name in own:
            entry.unlink()
    try:
        folder.rmdir()
    except OSError as exc:  # something was added while the model was written: it is not ours to delete
        raise TinySamError(f"the new model dir is in place, but the previous one gained other files and is kept in {folder}") from exc


def _swap(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving a previous ``target`` aside first and deleting it only after."""
    umask = os.umask(0)  # mkdtemp makes the folder 0700; give the result the user's usual mode
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)
        if not target.exists():
            os.replace(staging, target)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside)  # a folder renamed onto an empty one replaces it
        try:
            os.replace(staging, target)
        except BaseException:  # an error, Ctrl-C or SIGTERM: put the previous model dir back
            if not target.exists():
                os.replace(aside, target)
            raise
    except OSError as exc:
        raise TinySamError(f"cannot move the new model dir into {target}: {exc.strerror or exc}") from exc
    _remove_model_dir(aside)


@contextmanager
def replaced_dir(path: str | Path, inputs: Sequence[Path | str | None] = (), overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path`` to write a model dir into; on success it becomes ``path``.

    The rules of ``check_replaceable`` hold, checked again before the swap. The previous model dir
    is moved aside, the staged one renamed into place, and only then are the old files deleted, so
    a failure at any point leaves the previous output intact; the staging folder never outlives the block.
    """
    target = check_replaceable(path, inputs, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        check_replaceable(path, inputs, overwrite)  # the folder may have changed during the slow work
        _swap(staging, target)
    finally:
        if staging.exists():  # the staging folder is this function's own
            shutil.rmtree(staging)
