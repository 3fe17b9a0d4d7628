"""Weights registry: cache location, atomic size-checked download, sha256 recording, offline errors, corrupt cached files.

Downloads are served by a throw-away HTTP server on 127.0.0.1; nothing leaves the machine.
"""

import hashlib
import http.server
import socket
import threading

import pytest

from tinysam_edge import weights
from tinysam_edge.cli import main
from tinysam_edge.errors import WeightsError

PAYLOAD = b"PK\x03\x04" + bytes(range(256)) * 4000  # ~1 MB that starts like a zip (torch.save's format)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = PAYLOAD
    claimed_length: int | None = None

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.claimed_length or len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    _Handler.body, _Handler.claimed_length = PAYLOAD, None


def _entry(monkeypatch, url: str, name: str = "test_w", filename: str = "test_w.pth", md5_prefix: str = "") -> weights.WeightsEntry:
    pin = {"md5_prefix": md5_prefix} if md5_prefix else {}
    entry = weights.WeightsEntry(name, filename, url, "vit_t", "tinysam", False, "test", **pin)
    monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
    return entry


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYSAM_EDGE_HOME", str(tmp_path / "x"))
    assert weights.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("TINYSAM_EDGE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights.cache_dir() == tmp_path / "cache" / "tinysam-edge"


def test_registry_has_official_files():
    assert weights.DEFAULT_WEIGHTS == "tinysam_42.3"
    files = {e.filename: e for e in weights.REGISTRY.values()}
    assert set(files) >= {"tinysam_42.3.pth", "tinysam.pth", "tinysam_w8a8.pth", "mobile_sam.pt"}
    assert files["tinysam_42.3.pth"].url.endswith("/releases/download/3.0/tinysam_42.3.pth")
    assert files["tinysam_w8a8.pth"].pickled_module and files["mobile_sam.pt"].flavour == "sam"
    assert weights.get_entry("tinysam.pth") is weights.REGISTRY["tinysam"]


def test_fetch_records_checksum_and_reuses_cache(monkeypatch, server):
    entry = _entry(monkeypatch, f"{server}/w.pth")
    path = weights.fetch(entry.name, progress=False)
    assert path.read_bytes() == PAYLOAD
    recorded = weights.recorded_checksum(entry)
    assert recorded == {"size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "url": entry.url}
    assert weights.resolve_checkpoint(entry.name) == (path, entry)
    path.write_bytes(PAYLOAD[:-1] + b"x")  # same size, a changed byte: only the recorded sha256 tells
    assert weights.cache_state(entry) == ("corrupt", "it does not match the size/sha256 recorded when it was first downloaded")
    with pytest.raises(WeightsError, match="is corrupt .*weights fetch test_w"):
        weights.resolve_checkpoint(entry.name)
    assert weights.fetch(entry.name, progress=False) == path and path.read_bytes() == PAYLOAD  # replaced
    assert weights.cache_state(entry) == ("unverified", "matches its first download")


def test_changed_upstream_file_is_rejected(monkeypatch, server):
    entry = _entry(monkeypatch, f"{server}/w.pth")
    path = weights.fetch(entry.name, progress=False)
    _Handler.body = PAYLOAD[:4] + PAYLOAD[:3:-1]
    with pytest.raises(WeightsError, match="recorded earlier"):
        weights.fetch(entry.name, force=True, progress=False)
    assert path.read_bytes() == PAYLOAD  # the good file is kept


def test_truncated_download_leaves_nothing(monkeypatch, server):
    entry = _entry(monkeypatch, f"{server}/w.pth")
    _Handler.claimed_length = len(PAYLOAD) + 1000
    with pytest.raises(WeightsError, match="incomplete|failed"):
        weights.fetch(entry.name, progress=False)
    assert not weights.cached_path(entry).exists()
    assert list(weights.cache_dir().iterdir()) == []


def test_offline_fails_fast_with_hint(monkeypatch):
    entry = _entry(monkeypatch, f"http://127.0.0.1:{_closed_port()}/w.pth")
    with pytest.raises(WeightsError) as info:
        weights.resolve_checkpoint(entry.name)
    message = str(info.value)
    assert "cannot download test_w.pth" in message and str(weights.cached_path(entry)) in message and "--checkpoint" in message
    with pytest.raises(WeightsError, match="not in the cache"):
        weights.resolve_checkpoint(entry.name, download=False)


def test_manual_download_is_found(monkeypatch):
    entry = _entry(monkeypatch, f"http://127.0.0.1:{_closed_port()}/w.pth")
    weights.cached_path(entry).parent.mkdir(parents=True)
    weights.cached_path(entry).write_bytes(PAYLOAD)
    assert weights.resolve_checkpoint(entry.name)[0] == weights.cached_path(entry)
    assert weights.cache_state(entry) == ("unverified", "no digest recorded")


def test_unknown_name():
    with pytest.raises(WeightsError, match="unknown weights"):
        weights.fetch("sam_vit_z")


GARBAGE = bytes(range(250)) * 4  # the case: 1000 bytes of garbage at a checkpoint's cache path


@pytest.mark.parametrize(
    "body, reason",
    [
        (GARBAGE, "1000 bytes, far too small"),
        (b"<html>" + bytes(200_000), "neither a zip archive nor a pickle"),
    ],
)
def test_garbage_cached_checkpoint_is_corrupt_and_refused(monkeypatch, capsys, body, reason):
    entry = _entry(monkeypatch, f"http://127.0.0.1:{_closed_port()}/m.pt", "mobile_sam", "mobile_sam.pt")
    path = weights.cached_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    assert main(["weights", "list"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mobile_sam "))
    assert listed.split()[1] == "corrupt" and reason in listed
    assert main(["weights", "fetch", "mobile_sam"]) == 2  # offline: cannot replace it, one line says so
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is corrupt" in err and "cannot be replaced" in err and "cannot download" in err
    for spec in ("mobile_sam", str(path)):  # by name, and by its path in the cache
        with pytest.raises(WeightsError, match="is corrupt"):
            weights.resolve_checkpoint(spec)
    assert path.read_bytes() == body  # refused, not deleted


def test_fetch_replaces_a_corrupt_cached_file(monkeypatch, server, capsys):
    entry = _entry(monkeypatch, f"{server}/m.pt", "mobile_sam", "mobile_sam.pt")
    path = weights.cached_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(GARBAGE)
    assert main(["weights", "fetch", "mobile_sam"]) == 0
    assert path.read_bytes() == PAYLOAD and "was corrupt" in capsys.readouterr().err
    assert weights.cache_state(entry) == ("unverified", "matches its first download")


def test_pinned_md5_prefix(monkeypatch, server):
    good = hashlib.md5(PAYLOAD).hexdigest()[:6]
    entry = _entry(monkeypatch, f"{server}/w.pth", md5_prefix=good)
    weights.fetch(entry.name, progress=False)
    assert weights.cache_state(entry) == ("verified", f"MD5 starts with {good}")
    bad = _entry(monkeypatch, f"{server}/w.pth", name="bad_w", filename="bad_w.pth", md5_prefix="000000" if good != "000000" else "111111")
    with pytest.raises(WeightsError, match="not the published file: its MD5"):
        weights.fetch(bad.name, progress=False)
    assert not weights.cached_path(bad).exists() and weights.recorded_checksum(bad) is None  # nothing saved or recorded
    weights.cached_path(bad).write_bytes(PAYLOAD)  # placed by hand: the pin still applies
    assert weights.cache_state(bad)[0] == "corrupt"


def test_sam_pins_are_the_md5_prefixes_in_their_names():
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        entry = weights.REGISTRY[name]
        assert entry.filename.endswith(f"_{entry.md5_prefix}.pth") and len(entry.md5_prefix) == 6
    assert not any(e.md5_prefix for e in weights.REGISTRY.values() if not e.name.startswith("sam_"))


def test_loading_refuses_a_corrupt_cached_file_before_torch_reads_it(monkeypatch):
    torch = pytest.importorskip("torch")
    from tinysam_edge.models import build_sam

    entry = _entry(monkeypatch, f"http://127.0.0.1:{_closed_port()}/m.pt", "mobile_sam", "mobile_sam.pt")
    weights.cached_path(entry).parent.mkdir(parents=True)
    weights.cached_path(entry).write_bytes(GARBAGE)

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called on a corrupt cached file")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(WeightsError, match="is corrupt"):
        build_sam("vit_t", checkpoint="mobile_sam")


def test_weights_list_shows_the_cached_model_dirs(random_model_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from tinysam_edge.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("TINYSAM_EDGE_HOME", str(home))
    shutil.copytree(random_model_dir, home / "ir" / "random-123")
    (home / "ir" / "broken").mkdir()
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "exported model dirs (2;" in out and f"{home / 'ir' / 'random-123'}  random_vit_t.pth, fp32, flavour tinysam" in out
    assert f"{home / 'ir' / 'broken'}  unusable:" in out
