"""Weights registry: cache location, atomic size-checked download, sha256 recording, offline errors.

Downloads are served by a throw-away HTTP server on 127.0.0.1; nothing leaves the machine.
"""

import hashlib
import http.server
import socket
import threading

import pytest

from tinysam_edge import weights
from tinysam_edge.errors import WeightsError

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


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


def _entry(monkeypatch, url: str) -> weights.WeightsEntry:
    entry = weights.WeightsEntry("test_w", "test_w.pth", url, "vit_t", "tinysam", False, "test")
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
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="does not match the size/sha256"):
        weights.fetch(entry.name, progress=False)


def test_changed_upstream_file_is_rejected(monkeypatch, server):
    entry = _entry(monkeypatch, f"{server}/w.pth")
    path = weights.fetch(entry.name, progress=False)
    _Handler.body = PAYLOAD[::-1]
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
    weights.cached_path(entry).write_bytes(b"placed by hand")
    assert weights.resolve_checkpoint(entry.name)[0] == weights.cached_path(entry)


def test_unknown_name():
    with pytest.raises(WeightsError, match="unknown weights"):
        weights.fetch("sam_vit_z")
