"""A ``tinysam-edge serve`` process on a free loopback port, and a small stdlib HTTP client for it."""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    for name, data in files.items():
        disposition = f'Content-Disposition: form-data; name="{name}"; filename="upload.bin"'
        head = f"--{boundary}\r\n{disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One HTTP/1.1 connection per request (like independent clients), from ``source`` (a loopback address) if given."""

    def __init__(self, port: int, api_key: str | None = None, timeout: float = 300, source: str | None = None) -> None:
        self.port, self.api_key, self.timeout, self.source = port, api_key, timeout, source

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        if self.api_key:
            headers.setdefault("Authorization", f"Bearer {self.api_key}")
        source = (self.source, 0) if self.source else None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout, source_address=source)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_json(self, path: str, payload: object | str) -> Reply:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        return self.request("POST", path, body.encode(), {"Content-Type": "application/json"})

    def upload(self, data: bytes, path: str = "/v1/images", fields: dict[str, str] | None = None) -> Reply:
        body, content_type = multipart(fields or {}, {"image": data})
        return self.request("POST", path, body, {"Content-Type": content_type})


class Server:
    """``python -m tinysam_edge serve`` in a subprocess; ``start`` waits for /readyz (or another path) to answer 200."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.command = [
            sys.executable,
            "-m",
            "tinysam_edge",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        self.log_path, self.env = log_path, {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300, ready: str = "/readyz") -> "Server":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        client, deadline = Client(self.port, timeout=5), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if client.get(ready).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def flood(self, requests: list[tuple[str, bytes, str]], probe_timeout: float = 5.0, baseline_s: float = 2.0) -> dict:
        """Send every ``(path, body, content type)`` POST at once, each from a loopback address of its own, while
        ``/healthz`` is due every 20 ms from 127.0.0.1 and the server's RSS is sampled every 20 ms.

        A probe's latency counts from when it was due, so a stall counts once per 20 ms it lasts (not once).
        Returns the answers' status counts, the probes' statuses ("error" past ``probe_timeout``) and latency
        p50 / p99 / max in ms, the p99 of ``baseline_s`` of probes before the flood (the machine's own noise),
        and the RSS before the flood and its peak (MB).
        """
        rss = [self.rss_bytes()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                rss.append(self.rss_bytes())

        def send(i: int) -> int | str:
            path, body, content_type = requests[i]
            client = Client(self.port, timeout=120, source=f"127.0.1.{1 + i % 250}")
            try:
                return client.request("POST", path, body, {"Content-Type": content_type}).status
            except OSError:
                return "error"

        baseline = _probes(self.port, probe_timeout, threading.Event(), baseline_s)
        probes: list[tuple[int | str, float]] = []
        watchers = [threading.Thread(target=sample), threading.Thread(target=_probes, args=(self.port, probe_timeout, done, None, probes))]
        for watcher in watchers:
            watcher.start()
        try:
            with ThreadPoolExecutor(len(requests)) as pool:
                statuses = list(pool.map(send, range(len(requests))))
        finally:
            done.set()
            for watcher in watchers:
                watcher.join()
        latencies = sorted(1000 * seconds for _, seconds in probes)
        return {
            "answers": _counts(statuses),
            "healthz": _counts([status for status, _ in probes]),
            "healthz_p50_ms": round(latencies[len(latencies) // 2], 1),
            "healthz_p99_ms": round(_p99(latencies), 1),
            "healthz_max_ms": round(latencies[-1], 1),
            "healthz_idle_p99_ms": round(_p99(sorted(1000 * seconds for _, seconds in baseline)), 1),
            "rss_before_mb": rss[0] >> 20,
            "rss_peak_mb": max(rss) >> 20,
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=30)


def _counts(values: list) -> dict[str, int]:
    return {str(v): values.count(v) for v in sorted(set(values), key=str)}


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _probes(
    port: int, timeout: float, done: threading.Event, seconds: float | None = None, out: list | None = None
) -> list[tuple[int | str, float]]:
    """GET /healthz due every 20 ms until ``done`` is set or ``seconds`` have passed: (status, seconds since due) each."""
    out = [] if out is None else out
    client, due = Client(port, timeout=timeout), time.perf_counter()
    stop = due + seconds if seconds is not None else float("inf")
    while not done.is_set() and due < stop:
        try:
            status: int | str = client.get("/healthz").status
        except OSError:
            status = "error"
        now = time.perf_counter()
        while due <= now:  # every probe due while this one was waiting waited too
            out.append((status, now - due))
            due += 0.02
        time.sleep(due - now)
    return out
