"""A ``tinysam-edge serve`` process on a free loopback port, and a small stdlib HTTP client for it."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
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
    """One HTTP/1.1 connection per request (like independent clients)."""

    def __init__(self, port: int, api_key: str | None = None, timeout: float = 300) -> None:
        self.port, self.api_key, self.timeout = port, api_key, timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        if self.api_key:
            headers.setdefault("Authorization", f"Bearer {self.api_key}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=30)
