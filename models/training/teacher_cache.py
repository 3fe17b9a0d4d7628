"""Precomputed teacher image embeddings (fp16 .npy per image), as the paper does: the big teacher encoder runs once.

Filled by ``cache_builder.build_cache``. Layout: ``DIR/meta.json`` (which teacher, whether flipped copies exist) and ``DIR/<key>.npy`` /
``DIR/<key>.hflip.npy`` of shape (1, 256, 64, 64). Files are written atomically, so an interrupted run
resumes where it stopped and never leaves a truncated embedding behind.
"""

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinysam_edge.errors import TinySamError
from tinysam_edge.files import atomic_write

FORMAT_VERSION = 1
EMBEDDING_SHAPE = (1, 256, 64, 64)
EMBEDDING_DTYPE = np.dtype(np.float16)


def _npy_size() -> int:
    """Bytes of one cached embedding file: the .npy header that ``np.save`` writes plus the fp16 data."""
    header = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(EMBEDDING_DTYPE), "fortran_order": False, "shape": EMBEDDING_SHAPE}
    np.lib.format.write_array_header_1_0(header, fields)
    return header.tell() + EMBEDDING_DTYPE.itemsize * int(np.prod(EMBEDDING_SHAPE))


EMBEDDING_FILE_SIZE = _npy_size()


@dataclass(frozen=True)
class CacheMeta:
    """What a cache holds: the teacher (model name, checkpoint file name and sha256) and flipped copies."""

    model: str
    checkpoint: str
    sha256: str
    flips: bool
    format: int = FORMAT_VERSION


class TeacherCache:
    """Read access to a cache folder written by ``build_cache``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise TinySamError(f"{self.root} is not a teacher cache (no meta.json); create it with: tinysam-edge train cache-teacher")
        try:
            self.meta = CacheMeta(**json.loads(meta_path.read_text()))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError; TypeError: wrong or missing keys
            raise TinySamError(f"{meta_path} is damaged ({exc}); rebuild the cache with: tinysam-edge train cache-teacher") from exc
        if self.meta.format != FORMAT_VERSION:
            raise TinySamError(f"{self.root} has cache format {self.meta.format}; this version reads {FORMAT_VERSION}: rebuild it")

    @property
    def flips(self) -> bool:
        """Whether horizontally flipped embeddings are cached too."""
        return self.meta.flips

    def path(self, key: str, flipped: bool = False) -> Path:
        """The file of one embedding."""
        return self.root / f"{key}{'.hflip' if flipped else ''}.npy"

    def intact(self, path: Path) -> bool:
        """Whether an embedding file exists with the size of a complete one (an empty or truncated file is not)."""
        return path.is_file() and path.stat().st_size == EMBEDDING_FILE_SIZE

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Keys whose embeddings (and flipped embeddings, if the cache has flips) are absent or damaged."""
        return [k for k in keys if not self.intact(self.path(k)) or (self.flips and not self.intact(self.path(k, True)))]

    def load(self, key: str, flipped: bool = False) -> np.ndarray:
        """One (1, 256, 64, 64) float16 embedding; a missing or damaged file is one ``TinySamError`` naming it."""
        path = self.path(key, flipped)
        rerun = "run tinysam-edge train cache-teacher again (it resumes and replaces damaged files)"
        if not path.is_file():
            raise TinySamError(f"teacher embedding {path} is missing; {rerun}")
        try:
            embedding = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise TinySamError(f"teacher embedding {path} is damaged ({type(exc).__name__}); {rerun}") from exc
        if embedding.shape != EMBEDDING_SHAPE or embedding.dtype != EMBEDDING_DTYPE:
            raise TinySamError(
                f"teacher embedding {path} holds {embedding.dtype} {embedding.shape}, not float16 {EMBEDDING_SHAPE}; {rerun}"
            )
        return embedding

    def store(self, key: str, flipped: bool, embedding: np.ndarray) -> None:
        """Write one (1, 256, 64, 64) embedding as float16, atomically (a crash leaves no partial file)."""
        if tuple(embedding.shape) != EMBEDDING_SHAPE:
            raise TinySamError(f"the teacher encoder returned {tuple(embedding.shape)}, not {EMBEDDING_SHAPE}")
        with atomic_write(self.path(key, flipped)) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, embedding.astype(EMBEDDING_DTYPE))


def open_cache(out_dir: str | Path, meta: CacheMeta) -> TeacherCache:
    """The teacher cache in ``out_dir`` for ``meta``, created if new; an existing cache of another teacher is refused, not mixed."""
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = TeacherCache(out).meta
        if old != meta:
            raise TinySamError(
                f"{out} holds embeddings of another teacher or flip setting ({old.checkpoint}, flips={old.flips}); use a new --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise TinySamError(f"{out} exists and is not a teacher cache; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(asdict(meta), indent=1))
    return TeacherCache(out)
