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
from .paths import cache_dir

CHECKSUMS_FILE = "checksums.json"
#: A cached file smaller than this cannot be a checkpoint (the smallest registry file, mobile_sam.pt, is about 40 MB).
MIN_CHECKPOINT_BYTES = 100_000
#: How a torch checkpoint starts: a zip archive (torch.save since 1.6) or a pickle stream (opcode PROTO, the legacy format).
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


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
    #: The start of the file's MD5 as its publisher names it ("" where nothing is published): see REGISTRY.
    md5_prefix: str = ""


_TINYSAM = "https://github.com/xinghaochen/TinySAM/releases/download"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything"
# Pinned digests. Meta publishes no checksum for SAM's files except their names: the six hex digits in
# sam_vit_b_01ec64.pth etc. (the links of facebookresearch/segment-anything's README, "Model Checkpoints")
# are the start of each file's MD5, so those six digits are pinned as ``md5_prefix``. TinySAM's and
# MobileSAM's releases publish no digest: their files are checked against the size and sha256 recorded at
# the first download only (listed as "unverified").
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
            md5_prefix="01ec64",
        ),
        WeightsEntry(
            "sam_vit_l",
            "sam_vit_l_0b3195.pth",
            f"{_SAM}/sam_vit_l_0b3195.pth",
            "vit_l",
            "sam",
            False,
            "SAM ViT-L (Meta), distillation teacher, 1.25 GB",
            md5_prefix="0b3195",
        ),
        WeightsEntry(
            "sam_vit_h",
            "sam_vit_h_4b8939.pth",
            f"{_SAM}/sam_vit_h_4b8939.pth",
            "vit_h",
            "sam",
            False,
            "SAM ViT-H (Meta), the paper's teacher, 2.56 GB",
            md5_prefix="4b8939",
        ),
    )
}
DEFAULT_WEIGHTS = "tinysam_42.3"


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
    return _digests(path)[0]


def _digests(path: Path) -> tuple[str, str]:
    """Hex sha256 and MD5 of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _problem(entry: WeightsEntry, size: int, head: bytes, digests: tuple[str, str] | None, known: dict | None) -> str | None:
    """Why a file of ``size`` bytes starting with ``head`` (sha256, MD5) cannot be ``entry``'s checkpoint; None if it can."""
    if size < MIN_CHECKPOINT_BYTES:
        return f"{size} bytes, far too small for a checkpoint"
    if not head.startswith(CHECKPOINT_MAGIC):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    if digests is None:
        return None
    sha, md5 = digests
    if entry.md5_prefix and not md5.startswith(entry.md5_prefix):
        return f"its MD5 {md5} does not start with {entry.md5_prefix}, the digest its publisher names it by"
    if known and (known.get("size"), known.get("sha256")) != (size, sha):
        return "it does not match the size/sha256 recorded when it was first downloaded"
    return None


#: Files already checked in this process, by (path, size, mtime, record): a multi-GB teacher is hashed once, not per use.
_CHECKED: dict[tuple, str | None] = {}


def check_cached(entry: WeightsEntry) -> str | None:
    """Why the cached file of ``entry`` is corrupt (too small, not a zip/pickle, not its pinned or recorded digest), or None."""
    path = cached_path(entry)
    stat, known = path.stat(), recorded_checksum(entry)
    key = (str(path), stat.st_size, stat.st_mtime_ns, json.dumps(known, sort_keys=True))
    if key not in _CHECKED:
        with open(path, "rb") as f:
            head = f.read(4)
        cheap = _problem(entry, stat.st_size, head, None, known)  # hash only a file that can be a checkpoint at all
        _CHECKED[key] = cheap or _problem(entry, stat.st_size, head, _digests(path), known)
    return _CHECKED[key]


def cache_state(entry: WeightsEntry) -> tuple[str, str]:
    """``entry``'s cache state: ("missing" | "corrupt" | "verified" (pinned digest) | "unverified", detail)."""
    if not cached_path(entry).is_file():
        return "missing", ""
    problem = check_cached(entry)
    if problem:
        return "corrupt", problem
    if entry.md5_prefix:
        return "verified", f"MD5 starts with {entry.md5_prefix}"
    return "unverified", "matches its first download" if recorded_checksum(entry) else "no digest recorded"


def _offline_hint(entry: WeightsEntry) -> str:
    return f"download {entry.url} by hand and put it at {cached_path(entry)}, or pass --checkpoint /path/to/{entry.filename}"


def fetch(name: str, force: bool = False, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download a registry checkpoint into the cache (atomically, size-checked) and return its path.

    A cached file is kept unless it is corrupt (``check_cached``), which is downloaded again. A
    download must be a checkpoint and match the pinned digest; the first one records the file's
    size and sha256, and later downloads must match them.
    """
    entry = get_entry(name)
    if entry is None:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    target = cached_path(entry)
    corrupt = check_cached(entry) if target.is_file() else None
    if target.is_file() and not force and corrupt is None:
        return target
    replacing = f"the cached {target} is corrupt ({corrupt}) and cannot be replaced: " if corrupt else ""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(entry.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"{replacing}cannot download {entry.filename} ({reason}); offline? {_offline_hint(entry)}") from exc
    try:
        with atomic_write(target) as tmp, response:
            size, head, digests = _download(response, tmp, entry.filename, progress)
            known = recorded_checksum(entry)
            if known and (known["size"], known["sha256"]) != (size, digests[0]):
                raise WeightsError(f"downloaded {entry.filename} has sha256 {digests[0]}, but {known['sha256']} was recorded earlier")
            problem = _problem(entry, size, head, digests, None)
            if problem:
                raise WeightsError(f"downloaded {entry.filename} is not the published file: {problem}; nothing was saved")
    except (OSError, http.client.HTTPException) as exc:
        raise WeightsError(f"download of {entry.filename} failed ({exc}); {_offline_hint(entry)}") from exc
    if not known:
        _record_checksum(entry, size, digests[0])
    return target


def _download(response, tmp: Path, filename: str, progress: bool) -> tuple[int, bytes, tuple[str, str]]:
    """Stream ``response`` into ``tmp`` with a progress bar; returns its size, first bytes, sha256 and MD5."""
    expected = int(response.headers.get("Content-Length") or 0) or None
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size, head = 0, b""
    with open(tmp, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            sha.update(chunk)
            md5.update(chunk)
            head = head or chunk[:4]
            size += len(chunk)
            bar.update(len(chunk))
    if expected is not None and size != expected:
        raise WeightsError(f"download of {filename} is incomplete ({size} of {expected} bytes); try again")
    return size, head, (sha.hexdigest(), md5.hexdigest())


def verify(entry: WeightsEntry) -> None:
    """Refuse a corrupt cached file of ``entry`` (see ``check_cached``) before anything reads it as a checkpoint."""
    problem = check_cached(entry)
    if problem:
        raise WeightsError(f"{cached_path(entry)} is corrupt ({problem}); run 'tinysam-edge weights fetch {entry.name}' to replace it")


def resolve_checkpoint(checkpoint: str | os.PathLike, download: bool = True) -> tuple[Path, WeightsEntry | None]:
    """Turn ``--checkpoint`` (an existing file or a registry name) into a local file path.

    Registry names are fetched into the cache on first use when ``download`` is true. A cached file
    (named, or passed by its path in the cache) is verified first: a corrupt one is refused before
    torch reads it.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        entry = get_entry(path.name)
        if entry is not None and cached_path(entry).is_file() and path.resolve() == cached_path(entry).resolve():
            verify(entry)
        return path, entry
    entry = get_entry(str(checkpoint))
    if entry is None:
        raise WeightsError(f"checkpoint {str(checkpoint)!r} is neither a file nor a known weights name ({', '.join(REGISTRY)})")
    if cached_path(entry).is_file():
        verify(entry)
        return cached_path(entry), entry
    if not download:
        raise WeightsError(f"{entry.filename} is not in the cache; run 'tinysam-edge weights fetch {entry.name}' or {_offline_hint(entry)}")
    return fetch(entry.name), entry
