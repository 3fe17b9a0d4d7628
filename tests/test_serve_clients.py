"""``serve`` against slow, heavy and odd clients: a real server process on loopback, /healthz latency and peak RSS.

Run as a script to compare two trees under one flood (the figures of docs/deploy.md):
``python tests/test_serve_clients.py MODEL_DIR [OLD_PYTHONPATH]``.
"""

import io
import json
import socket
import sys
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
from PIL import Image

from serve_helpers import Client, Server, multipart

READ_TIMEOUT = 1.0
PER_CLIENT = 8
MAX_CONNECTIONS = 32
BODY_MB = 64
#: Options of the test server: the limits small, so that a test reaches them quickly.
OPTIONS = (
    ("--queue", "0"),
    ("--read-timeout", str(READ_TIMEOUT)),
    ("--max-client-connections", str(PER_CLIENT)),
    ("--max-connections", str(MAX_CONNECTIONS)),
    ("--body-memory-mb", str(BODY_MB)),
)


def photo_jpeg(side: int) -> bytes:
    """A side x side JPEG that compresses like a photo (smooth gradients plus grain), a few MB at 4096."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rgb = np.stack([x, y, (x + y) / 2], axis=2) * 200 + np.random.default_rng(0).normal(0, 12, (side, side, 1))
    ok, data = cv2.imencode(".jpg", np.clip(rgb, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def huge_prompt_json(megabytes: int) -> bytes:
    """A predict body of ``megabytes`` MB: points by the million (each a valid pair)."""
    pairs = megabytes * 1024 * 1024 // 9
    return b'{"points": [' + b",".join([b"[10, 10]"] * pairs) + b'], "labels": [1]}'


@pytest.fixture(scope="module")
def server(parity_model_dir, tmp_path_factory):
    srv = Server(parity_model_dir, tmp_path_factory.mktemp("clients") / "server.log", *(v for o in OPTIONS for v in o)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def image_id(server) -> str:
    return Client(server.port).upload(photo_jpeg(64)).json()["image_id"]


def half_headers(port: int, sources: list[str]) -> list[socket.socket]:
    """One connection from each source address that sends half a request header and then nothing."""
    sockets = []
    for source in sources:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:")
        except OSError:
            pass  # refused at once
        sockets.append(sock)
    return sockets


def answer_of(sock: socket.socket) -> str:
    """The status the server wrote before closing (``"closed"`` without one); waits at most 10 s."""
    try:
        data = sock.recv(4096)
    except OSError:
        data = b""
    finally:
        sock.close()
    return data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


def health_probes(port: int, n: int = 20) -> tuple[list[int], float]:
    """``n`` GET /healthz from 127.0.0.1: statuses and the slowest answer in ms (a refusal is a status too)."""
    statuses, slowest = [], 0.0
    for _ in range(n):
        start = time.perf_counter()
        try:
            statuses.append(Client(port, timeout=5).get("/healthz").status)
        except OSError:
            statuses.append(0)
        slowest = max(slowest, 1000 * (time.perf_counter() - start))
    return statuses, slowest


def test_slow_clients_cannot_take_the_service_down(server):
    """64 half headers from one address: 8 held until the header deadline (408), the rest refused (503); health stays 200.
    Then 40 from 40 addresses, past --max-connections: the oldest are closed to let probes in."""
    one_address = half_headers(server.port, ["127.0.0.2"] * 64)
    statuses, slowest = health_probes(server.port)
    answers = [answer_of(s) for s in one_address]
    assert statuses == [200] * len(statuses)
    assert (answers.count("503"), answers.count("408")) == (64 - PER_CLIENT, PER_CLIENT), answers

    many = half_headers(server.port, [f"127.0.2.{i}" for i in range(1, 41)])
    statuses_many, slowest_many = health_probes(server.port)
    answers_many = [answer_of(s) for s in many]
    assert statuses_many == [200] * len(statuses_many) and "503" not in answers_many
    print(f"\nSLOW healthz slowest {slowest:.0f} ms (one address), {slowest_many:.0f} ms (40 addresses)")


def test_a_stalled_body_gets_408(server):
    """A body that stops arriving is answered 408 after --read-timeout, and holds no queue place meanwhile."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.3", 0))
    sock.sendall(
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n"
    )
    assert answer_of(sock) == "408"


def test_upload_flood_keeps_health_answering_and_memory_bounded(server, image_id):
    """12 concurrent 4-Mpx uploads and two 15 MB predict bodies on a server with one worker and no queue: one upload
    is decoded and embedded, the others get 503 undecoded, the JSON bodies 413 unread; /healthz answers throughout."""
    body, content_type = multipart({}, {"image": photo_jpeg(2048)})
    requests = [("/v1/images", body, content_type)] * 12 + [
        (f"/v1/images/{image_id}/predict", huge_prompt_json(15), "application/json")
    ] * 2
    figures = server.flood(requests, probe_timeout=2.0)
    print("\nFLOOD " + json.dumps(figures))
    assert figures["healthz"] == {"200": sum(figures["healthz"].values())}, figures
    assert figures["answers"] == {"200": 1, "413": 2, "503": 11}, figures
    bound = BODY_MB + 2 * 32 + 3 * 4096 * 4096 // 2**20 + 100  # see docs/deploy.md (100 MB: allocator slack)
    assert figures["rss_peak_mb"] - figures["rss_before_mb"] < bound, figures


@pytest.mark.slow
def test_heavy_flood_of_16_megapixel_uploads(parity_model_dir, tmp_path):
    """The issue's flood on the default options: 30 concurrent 16-Mpx uploads and 4 x 15 MB predict bodies."""
    srv = Server(parity_model_dir, tmp_path / "server.log").start()
    try:
        image_id = Client(srv.port).upload(photo_jpeg(64)).json()["image_id"]
        body, content_type = multipart({}, {"image": photo_jpeg(4096)})
        json_body = huge_prompt_json(15)
        requests = [("/v1/images", body, content_type)] * 30 + [(f"/v1/images/{image_id}/predict", json_body, "application/json")] * 4
        figures = srv.flood(requests, probe_timeout=2.0)
    finally:
        srv.stop()
    print("\nHEAVY FLOOD " + json.dumps(figures))
    assert figures["healthz"] == {"200": sum(figures["healthz"].values())}, figures
    assert set(figures["answers"]) <= {"200", "413", "503"} and figures["answers"]["413"] == 4, figures
    bound = 256 + 2 * 32 + 9 * 3 * 4096 * 4096 // 2**20 + 100  # the defaults in docs/deploy.md's formula
    assert figures["rss_peak_mb"] - figures["rss_before_mb"] < bound, figures


def png16_gray() -> bytes:
    ok, data = cv2.imencode(".png", np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1)))
    assert ok
    return data.tobytes()


def float_tiff() -> bytes:
    ok, data = cv2.imencode(".tiff", np.full((8, 8), 0.5, np.float32))
    assert ok
    return data.tobytes()


def test_uploads_decode_like_the_cli(tmp_path):
    """The service's decoder is the CLI's: 16-bit grey to its high byte, float TIFF refused, EXIF orientation applied."""
    from tinysam_edge.image import load_image
    from tinysam_edge.serve.errors import ApiError
    from tinysam_edge.serve.uploads import decode_upload

    (tmp_path / "g16.png").write_bytes(png16_gray())
    served, cli = decode_upload(png16_gray(), 1 << 24), load_image(tmp_path / "g16.png")
    assert np.array_equal(served, cli) and abs(served.mean() - 127.5) < 1
    with pytest.raises(ApiError) as refused:
        decode_upload(float_tiff(), 1 << 24)
    assert refused.value.status == 400
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 20)).save(rotated, format="JPEG", exif=exif)
    assert decode_upload(rotated.getvalue(), 1 << 24).shape == (30, 20, 3)


def test_odd_requests(server, image_id, parity_model_dir, tmp_path, capsys):
    """Float TIFF upload 400, mixed-case media type, 400-digit integers 422, HEAD on GET routes, a --source that is no video."""
    from tinysam_edge.cli import main

    client = Client(server.port)
    assert client.upload(float_tiff()).status == 400
    body, content_type = multipart({}, {"image": b"not an image"})
    mixed = client.request("POST", "/v1/images", body, {"Content-Type": content_type.replace("multipart/form-data", "Multipart/Form-Data")})
    assert mixed.status == 400 and "not an image" in mixed.json()["error"]
    big = "1" + "0" * 400
    for prompt in (f'{{"points": [[{big}, 1]], "labels": [1]}}', f'{{"box": [0, 0, {big}, 1]}}'):
        assert client.post_json(f"/v1/images/{image_id}/predict", prompt).status == 422
    assert client.post_json(f"/v1/images/{image_id}/everything", f'{{"pred_iou_thresh": {big}}}').status == 422
    for path in ("/healthz", "/readyz", "/", "/app.js"):
        head = client.request("HEAD", path)
        assert (head.status, head.body) == (200, b""), path
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert main(["serve", "--model-dir", str(parity_model_dir), "--port", "0", "--source", str(text)]) == 2
    assert "cannot open video source" in capsys.readouterr().err
    assert "Traceback" not in server.log()


def asgi_post(app, path: str, body: bytes, content_type: str) -> int:
    """The status ``app`` answers to one POST, driven in-process without its lifespan (so its models never load)."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers}
    scope |= {"client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_a_body_too_big_gets_413_even_when_busy():
    """413 is decided before any sign of load: a body that can never be taken is not answered 'retry later'.

    The app runs without its lifespan, so its models never load and every admissible request gets 503.
    """
    from tinysam_edge.predictor import ImageSnapshot
    from tinysam_edge.serve.app import MAX_JSON_BYTES, Settings, create_app

    app = create_app(lambda: None, Settings())
    api = next(r.endpoint.__self__ for r in app.routes if getattr(r, "name", "") == "predict")
    api.cache.put("a" * 32, ImageSnapshot(np.zeros((1, 256, 64, 64), np.float32), (64, 64), (1024, 1024), None, 0, 1 << 22))
    for route in ("predict", "everything"):
        assert asgi_post(app, f"/v1/images/{'a' * 32}/{route}", b" " * (MAX_JSON_BYTES + 1), "application/json") == 413
        assert asgi_post(app, f"/v1/images/{'a' * 32}/{route}", b"{}", "application/json") == 503


def test_auth_scheme_is_case_insensitive(parity_model_dir, tmp_path):
    key = "k" * 24
    srv = Server(parity_model_dir, tmp_path / "server.log", env={"TINYSAM_EDGE_API_KEY": key}).start(ready="/healthz")
    try:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert Client(srv.port).request("GET", "/metrics", headers={"Authorization": f"{scheme} {key}"}).status == 200
        assert Client(srv.port).request("GET", "/metrics", headers={"Authorization": f"Basic {key}"}).status == 401
    finally:
        srv.stop(kill=True)


def compare(model_dir: str, old_path: str | None) -> None:
    """The flood of the heavy test against this tree and (interleaved) the tree on ``old_path``, on one machine."""
    from pathlib import Path

    runs = [("after", {})] + ([("before", {"PYTHONPATH": old_path})] if old_path else [])
    body, content_type = multipart({}, {"image": photo_jpeg(4096)})
    for name, env in runs:
        srv = Server(Path(model_dir), Path(f"/tmp/flood-{name}.log"), env=env).start()
        try:
            image_id = Client(srv.port).upload(photo_jpeg(64)).json()["image_id"]
            requests = [("/v1/images", body, content_type)] * 30 + [
                (f"/v1/images/{image_id}/predict", huge_prompt_json(15), "application/json")
            ] * 4
            print(name, json.dumps(srv.flood(requests, probe_timeout=60.0)), flush=True)
        finally:
            srv.stop(kill=True)


if __name__ == "__main__":
    compare(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
