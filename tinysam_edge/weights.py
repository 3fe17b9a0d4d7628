"""Registry of the official weight files: where they come from, where they are cached, how they are fetched."""

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import WeightsError
from .files import atomic_write

CHECKSUMS_FILE = "checksums.json"


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint."""

    name: str
    filename: str
    url: str
    model: str
    flavour: str
    pickled_module: bool
    description: str


_TINYSAM = "https://github.com/xinghaochen/TinySAM/releases/download"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything"
REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "tinysam_42.3",
            "tinysam_42.3.pth",
            f"{_TINYSAM}/3.0/tinysam_42.3.pth",
            "vit_t",
            "tinysam",
            False,
            "TinySAM release 3.0, COCO AP 42.3",
        ),
        WeightsEntry(
            "tinysam", "tinysam.pth", f"{_TINYSAM}/1.0/tinysam.pth", "vit_t", "tinysam", False, "TinySAM release 1.0, COCO AP 41.9"
        ),
        WeightsEntry(
            "tinysam_w8a8",
            "tinysam_w8a8.pth",
            f"{_TINYSAM}/2.0/tinysam_w8a8.pth",
            "vit_t",
            "tinysam",
            True,
            "Q-TinySAM release 2.0: a pickled fake-quant module, needs --trust-pickle",
        ),
        WeightsEntry(
            "mobile_sam",
            "mobile_sam.pt",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "vit_t",
            "sam",
            False,
            "MobileSAM (same graph, SAM's token-0 single mask)",
        ),
        WeightsEntry(
            "sam_vit_b",
            "sam_vit_b_01ec64.pth",
            f"{_SAM}/sam_vit_b_01ec64.pth",
            "vit_b",
            "sam",
            False,
            "SAM ViT-B (Meta), distillation teacher, 375 MB",
        ),
        WeightsEntry(
            "sam_vit_l",
            "sam_vit_l_0b3195.pth",
            f"{_SAM}/sam_vit_l_0b3195.pth",
            "vit_l",
            "sam",
            False,
            "SAM ViT-L (Meta), distillation teacher, 1.25 GB",
        ),
        WeightsEntry(
            "sam_vit_h",
            "sam_vit_h_4b8939.pth",
            f"{_SAM}/sam_vit_h_4b8939.pth",
            "vit_h",
            "sam",
            False,
            "SAM ViT-H (Meta), the paper's teacher, 2.56 GB",
        ),
    )
}
DEFAULT_WEIGHTS = "tinysam_42.3"


def cache_dir() -> Path:
    """Where weights are cached: ``$TINYSAM_EDGE_HOME`` or ``$XDG_CACHE_HOME/tinysam-edge`` (default ~/.cache)."""
    if os.environ.get("TINYSAM_EDGE_HOME"):
        return Path(os.environ["TINYSAM_EDGE_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tinysam-edge"


def get_entry(name: str) -> WeightsEntry | None:
    """The registry entry for a name or a file name (``tinysam_42.3`` or ``tinysam_42.3.pth``), else None."""
    for entry in REGISTRY.values():
        if name in (entry.name, entry.filename):
            return entry
    return None


def cached_path(entry: WeightsEntry) -> Path:
    """Where ``entry`` lives in the cache (it may not exist yet)."""
    return cache_dir() / entry.filename


def _read_checksums() -> dict[str, dict]:
    path = cache_dir() / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def recorded_checksum(entry: WeightsEntry) -> dict | None:
    """The size/sha256 recorded when ``entry`` was first downloaded, if any."""
    return _read_checksums().get(entry.filename)


def _record_checksum(entry: WeightsEntry, size: int, sha256: str) -> None:
    sums = _read_checksums()
    sums[entry.filename] = {"size": size, "sha256": sha256, "url": entry.url}
    target = cache_dir() / CHECKSUMS_FILE
    with atomic_write(target) as tmp:
        tmp.write_text(json.dumps(sums, indent=2, sort_keys=True))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_hint(entry: WeightsEntry) -> str:
    return f"download {entry.url} by hand and put it at {cached_path(entry)}, or pass --checkpoint /path/to/{entry.filename}"


def fetch(name: str, force: bool = False, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download a registry checkpoint into the cache (atomically, size-checked) and return its path.

    The first download records the file's size and sha256; later downloads must match them.
    """
    entry = get_entry(name)
    if entry is None:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    target = cached_path(entry)
    if target.is_file() and not force:
        verify(entry)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(entry.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"cannot download {entry.filename} ({reason}); offline? {_offline_hint(entry)}") from exc
    expected = int(response.headers.get("Content-Length") or 0) or None
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            atomic_write(target) as tmp,
            response,
            open(tmp, "wb") as out,
            tqdm(total=expected, unit="B", unit_scale=True, desc=entry.filename, disable=not progress) as bar,
        ):
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            if expected is not None and size != expected:
                raise WeightsError(f"download of {entry.filename} is incomplete ({size} of {expected} bytes); try again")
            known = recorded_checksum(entry)
            if known and (known["size"], known["sha256"]) != (size, digest.hexdigest()):
                raise WeightsError(
                    f"downloaded {entry.filename} has sha256 {digest.hexdigest()}, but {known['sha256']} was recorded earlier"
                )
    except (OSError, http.client.HTTPException) as exc:
        raise WeightsError(f"download of {entry.filename} failed ({exc}); {_offline_hint(entry)}") from exc
    if not known:
        _record_checksum(entry, size, digest.hexdigest())
    return target


def verify(entry: WeightsEntry) -> None:
    """Check a cached file against the size and sha256 recorded at download time (if any)."""
    path = cached_path(entry)
    known = recorded_checksum(entry)
    if known is None:
        return
    size = path.stat().st_size
    if size != known["size"] or sha256_file(path) != known["sha256"]:
        raise WeightsError(f"{path} does not match the size/sha256 recorded when it was downloaded; delete it and fetch again")


def resolve_checkpoint(checkpoint: str | os.PathLike, download: bool = True) -> tuple[Path, WeightsEntry | None]:
    """Turn ``--checkpoint`` (an existing file or a registry name) into a local file path.

    Registry names are fetched into the cache on first use when ``download`` is true.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path, get_entry(path.name)
    entry = get_entry(str(checkpoint))
    if entry is None:
        raise WeightsError(f"checkpoint {str(checkpoint)!r} is neither a file nor a known weights name ({', '.join(REGISTRY)})")
    if cached_path(entry).is_file():
        return cached_path(entry), entry
    if not download:
        raise WeightsError(f"{entry.filename} is not in the cache; run 'tinysam-edge weights fetch {entry.name}' or {_offline_hint(entry)}")
    return fetch(entry.name), entry
