"""``tinysam-edge serve``: a real server process on loopback, hostile inputs, parity with the in-process Predictor, load."""

import dataclasses
import http.client
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
from PIL import Image

from conftest import PARITY, require
from serve_helpers import Client, Server, multipart
from tinysam_edge.masks import encode_rle
from tinysam_edge.predictor import Predictor

MAX_PIXELS = 1_000_000


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height RGB pixels but carries one compressed row: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(Image.open(require(PARITY / "image.png")).convert("RGB"))


@pytest.fixture(scope="module")
def server(parity_model_dir, tmp_path_factory):
    srv = Server(
        parity_model_dir, tmp_path_factory.mktemp("serve") / "server.log", "--max-image-pixels", str(MAX_PIXELS), "--queue", "2"
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.port)


@pytest.fixture(scope="module")
def uploaded(client, image) -> str:
    reply = client.upload(png_bytes(image))
    assert reply.status == 200, reply.body
    assert (reply.json()["width"], reply.json()["height"]) == (image.shape[1], image.shape[0])
    return reply.json()["image_id"]


@pytest.fixture(scope="module")
def reference(parity_model_dir, image) -> Predictor:
    """The in-process predictor, with the same image set."""
    predictor = Predictor(parity_model_dir)
    predictor.set_image(image)
    return predictor


def reference_rles(predictor: Predictor, snapshot, prompt: dict) -> list[dict]:
    """In-process masks (COCO RLE) for a predict body, from an image snapshot (which fixes the decoder path)."""
    predictor.set_image_state(snapshot)
    masks, _, _ = predictor.predict(
        np.array(prompt["points"]),
        np.array(prompt["labels"]),
        None if prompt.get("box") is None else np.array(prompt["box"]),
        multimask_output=prompt.get("multimask_output", False),
    )
    return [encode_rle(m) for m in masks]


def fresh(predictor: Predictor):
    """The predictor's image as it was right after set_image: no prompt decoded, no decoder state."""
    snapshot = predictor.get_image_state()
    return dataclasses.replace(snapshot, decoder_state=None, prompts=0, nbytes=snapshot.features.nbytes)


def both_paths(predictor: Predictor) -> tuple:
    """Snapshots of the image before its first prompt (plain decoder next) and after two (split decoder, state built).

    Concurrent clicks on one image race for its cached state, so a server answer must equal one of the two results.
    """
    first = fresh(predictor)
    predictor.set_image_state(first)
    for _ in range(2):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))
    later = predictor.get_image_state()
    assert later.decoder_state is not None and later.prompts == 2
    return first, later


def test_health_ready_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    page = client.get("/")
    assert page.status == 200 and b"<canvas" in page.body and page.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in page.headers


def test_clicks_match_the_in_process_predictor(client, reference, image):
    """/v1/segment then two clicks on the returned id: bit-identical to set_image + the same three predict calls."""
    prompts = [
        {"points": [[400, 200]], "labels": [1]},
        {"points": [[400, 200], [600, 400]], "labels": [1, 0], "multimask_output": True},
        {"points": [[120, 300]], "labels": [1], "box": [50, 150, 350, 500]},
    ]
    first = client.upload(png_bytes(image), "/v1/segment", {"prompts": json.dumps(prompts[0])})
    assert first.status == 200, first.body
    image_id, replies = first.json()["image_id"], [first.json()]
    for prompt in prompts[1:]:
        reply = client.post_json(f"/v1/images/{image_id}/predict", prompt)
        assert reply.status == 200, reply.body
        replies.append(reply.json())
    reference.set_image_state(fresh(reference))
    for prompt, reply in zip(prompts, replies):
        expected = reference_rles(reference, reference.get_image_state(), prompt)
        assert [m["segmentation"] for m in reply["masks"]] == expected
        assert len(reply["masks"]) == (3 if prompt.get("multimask_output") else 1)
        assert set(reply["timings_ms"]) >= {"decoder", "postprocess"}
    assert "encoder" in replies[0]["timings_ms"] and "encoder" not in replies[1]["timings_ms"]  # clicks never re-run the encoder


def test_png_output(client, uploaded):
    reply = client.post_json(f"/v1/images/{uploaded}/predict?format=png", {"points": [[400, 200]], "labels": [1]})
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(reply.body)))
    assert mask.shape == (534, 800) and set(np.unique(mask)) <= {0, 255} and 0 < float(reply.headers["x-mask-score"]) <= 1.5


BAD_PROMPTS = [
    ("{bad json", 400, "malformed JSON"),
    ("[1, 2]", 400, "JSON object"),
    ('{"points": [[NaN, 10]], "labels": [1]}', 400, "NaN"),
    ('{"points": [[1e999, 10]], "labels": [1]}', 422, "NaN or infinite"),
    ('{"points": [[900, 10]], "labels": [1]}', 422, "outside"),
    ('{"box": [-5, 0, 10, 10]}', 422, "outside"),
    ('{"points": [[1, 2]], "labels": [2]}', 422, "labels"),
    ('{"points": [[1, 2]], "labels": [1], "extra": 1}', 422, "unknown field"),
    ('{"points": "here", "labels": [1]}', 422, "points"),
    ("{}", 422, "at least one point"),
]


@pytest.mark.parametrize("body, status, words", BAD_PROMPTS)
def test_bad_prompts_are_refused(client, uploaded, body, status, words):
    reply = client.post_json(f"/v1/images/{uploaded}/predict", body)
    assert reply.status == status and words in reply.json()["error"]


def test_bad_uploads_are_refused_and_the_server_keeps_serving(client, image, uploaded):
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    small_bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(small_bomb, format="PNG")  # a few kB that decode to 4 Mpx, over --max-image-pixels
    cases = [
        (b"hello, not an image", 400, "not an image"),
        (b"%PDF-1.4 renamed to photo.jpg", 400, "not an image"),
        (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], 400, "truncated"),
        (png_header_only(100_000, 100_000), 413, "pixels"),
        (png_header_only(1500, 1000), 413, "pixels"),
        (small_bomb.getvalue(), 413, "pixels"),
        (b"", 400, "empty"),
    ]
    for data, status, words in cases:
        reply = client.upload(data)
        assert (reply.status, words in reply.json()["error"]) == (status, True), (status, reply.body[:200])
    assert client.request("POST", "/v1/images", b"x", {"Content-Type": "text/plain"}).status == 415
    body, content_type = multipart({"other": "x"}, {})
    assert client.request("POST", "/v1/images", body, {"Content-Type": content_type}).status == 422
    assert client.post_json("/v1/images/0123/predict", {"points": [[1, 1]], "labels": [1]}).status == 404
    assert client.get("/nothing/here").json() == {"error": "Not Found"}
    assert client.post_json(f"/v1/images/{uploaded}/predict", {"points": [[10, 10]], "labels": [1]}).status == 200


def test_body_limit_and_metrics(client, uploaded):
    too_big = client.request("POST", "/v1/images", b"0" * (33 * 1024 * 1024), {"Content-Type": "multipart/form-data; boundary=x"})
    assert too_big.status == 413 and "body over" in too_big.json()["error"]
    text = client.get("/metrics").body.decode()
    for name in (
        "tinysam_requests_total",
        "tinysam_stage_seconds_bucket",
        "tinysam_queue_depth",
        "tinysam_cache_hits",
        "tinysam_rejected_total",
    ):
        assert name in text
    assert 'stage="encoder"' in text and 'route="/v1/images/{id}/predict",status="422"' in text


def test_everything_matches_the_in_process_generator(client, uploaded, reference, image):
    from tinysam_edge.mask_generator import MaskGenerator

    options = {"mode": "grid", "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    reply = client.post_json(f"/v1/images/{uploaded}/everything", options)
    assert reply.status == 200, reply.body
    expected = MaskGenerator(
        reference, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle"
    ).generate(image)
    assert len(expected) > 0
    assert [m["segmentation"] for m in reply.json()["masks"]] == [r["segmentation"] for r in expected]
    assert client.post_json(f"/v1/images/{uploaded}/everything", {"mode": "grid", "points_per_side": 10_000}).status == 422


@dataclasses.dataclass
class Load:
    """Answers of a load run: status per request ("error" for a refused or cut connection) and latency of each 200."""

    statuses: list = dataclasses.field(default_factory=list)
    latencies: list = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        counts = {str(s): self.statuses.count(s) for s in sorted(set(self.statuses), key=str)}
        return {
            "requests": len(self.statuses),
            **counts,
            "p50_s": round(float(np.percentile(self.latencies, 50)), 3),
            "p95_s": round(float(np.percentile(self.latencies, 95)), 3),
        }


def run_load(
    client: Client,
    image_ids: list[str],
    reference: Predictor,
    clients: int,
    requests: int,
    upload: bytes | None = None,
    polite: bool = False,
    load: Load | None = None,
) -> Load:
    """``requests`` clicks from ``clients`` threads on cached images: every answer 200 with the exact mask, or 503 + Retry-After.

    ``polite`` clients wait the Retry-After of a 503 before their next request (as real clients should).
    Answers go to ``load`` when given (so another thread can watch the run's progress).
    With ``upload`` (PNG bytes), every 40th request uploads it and one runs a small everything call; then
    connection errors and 404s (ids lost to a restart or evicted) are allowed too, as during a restart:
    a polite client waits a second after a connection error and uploads the image again after a 404.
    """
    rng = np.random.default_rng(0)
    prompts = [{"points": [[float(x), float(y)]], "labels": [1]} for x, y in rng.uniform([0, 0], [800, 534], (4, 2))]
    snapshots = both_paths(reference)
    expected = [[reference_rles(reference, s, p) for s in snapshots] for p in prompts]
    load, lock = load or Load(), threading.Lock()
    allowed = (200, 503, 404, "error") if upload is not None else (200, 503)

    def one(i: int) -> None:
        image_id, k, start = image_ids[i % len(image_ids)], i % len(prompts), time.perf_counter()
        try:
            if upload is not None and i % 40 == 39:
                reply = client.upload(upload)
            elif upload is not None and i == 20:
                reply = client.post_json(f"/v1/images/{image_id}/everything", {"mode": "grid", "points_per_side": 4})
            else:
                reply = client.post_json(f"/v1/images/{image_id}/predict", prompts[k])
                assert reply.status != 200 or [m["segmentation"] for m in reply.json()["masks"]] in expected[k]
            status = reply.status
            assert status != 503 or int(reply.headers["retry-after"]) >= 1
        except OSError as exc:
            status, reply = "error", exc
        with lock:
            load.statuses.append(status)
            if status == 200:
                load.latencies.append(time.perf_counter() - start)
        assert status in allowed, getattr(reply, "body", reply)
        if polite and status == 503:
            time.sleep(int(reply.headers["retry-after"]))
        elif polite and status == "error":
            time.sleep(1.0)
        elif polite and status == 404:
            again = client.upload(upload)
            if again.status == 200:
                image_ids[i % len(image_ids)] = again.json()["image_id"]

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return load


def test_concurrent_clicks_and_overload(client, uploaded, reference):
    """8 clients on a server with 1 worker and 2 queue places: 503 + Retry-After past the queue, exact masks otherwise."""
    statuses = run_load(client, [uploaded], reference, clients=8, requests=16).statuses
    assert len(statuses) == 16 and statuses.count(200) >= 1 and statuses.count(503) >= 1
    assert "tinysam_rejected_total 0.0" not in client.get("/metrics").body.decode()


def test_security_defaults(parity_model_dir, tmp_path, capsys, monkeypatch):
    """No API key: a LAN bind is refused. With one, the API needs it and health checks do not."""
    from tinysam_edge.cli import main

    monkeypatch.delenv("TINYSAM_EDGE_API_KEY", raising=False)
    for extra, words in (
        (["--host", "0.0.0.0"], "without an API key"),
        (["--api-key", "short"], "at least 16"),
        (["--source", "nothing.mp4"], "cannot open video source"),
    ):
        assert main(["serve", "--model-dir", str(parity_model_dir), *extra]) == 2
        assert words in capsys.readouterr().err
    key = "k" * 24
    srv = Server(parity_model_dir, tmp_path / "server.log", env={"TINYSAM_EDGE_API_KEY": key}).start(
        ready="/healthz"
    )  # no inference needed
    try:
        anonymous, keyed = Client(srv.port), Client(srv.port, api_key=key)
        assert anonymous.post_json("/v1/images/x/predict", {}).status == 401
        assert anonymous.get("/metrics").status == 401 and Client(srv.port, api_key="w" * 24).get("/metrics").status == 401
        assert anonymous.get("/healthz").status == 200 and keyed.get("/metrics").status == 200
        assert keyed.post_json("/v1/images/x/predict", {}).status == 404
    finally:
        srv.stop(kill=True)  # not waiting for the models it is still compiling


@pytest.mark.slow
def test_load_with_uploads_restart_and_bounded_memory(parity_model_dir, tmp_path, image, reference):
    """16 clients, 400 requests (clicks, uploads, one everything call) with the server killed and restarted mid-run."""
    srv = Server(parity_model_dir, tmp_path / "server.log", "--concurrency", "2", "--queue", "8", "--cache-images", "3").start()
    client, data = Client(srv.port), png_bytes(image)
    try:
        ids = [client.upload(data).json()["image_id"] for _ in range(4)]
        assert client.post_json(f"/v1/images/{ids[0]}/predict", {"points": [[1, 1]], "labels": [1]}).status == 404  # evicted: cache of 3
        steady = run_load(client, ids[1:], reference, clients=16, requests=200, polite=True)
        assert steady.statuses.count(200) >= 100
        rss = srv.rss_bytes()

        disrupted = Load()

        def restart() -> None:  # a quarter into the run
            while len(disrupted.statuses) < 50:
                time.sleep(0.05)
            srv.stop(kill=True)
            srv.start()

        restarter = threading.Thread(target=restart)
        restarter.start()
        ids = [client.upload(data).json()["image_id"] for _ in range(2)]
        run_load(client, ids, reference, clients=16, requests=200, upload=data, polite=True, load=disrupted)
        restarter.join()
        assert "error" in disrupted.statuses and srv.rss_bytes() < rss + 300 * 1024 * 1024
    finally:
        srv.stop()
    print("\nLOAD " + json.dumps({"steady": steady.summary(), "rss_mb": rss // 2**20, "with_restart": disrupted.summary()}))


def test_no_live_source_is_a_404(client):
    assert client.get("/v1/live").status == 404 and "--source" in client.get("/v1/live/frame.jpg").json()["error"]


@pytest.mark.slow
def test_live_source_streams_frames_with_persistent_prompts(parity_model_dir, tmp_path, image):
    """serve --source FILE: annotated JPEG frames, MJPEG parts, and clicks that change the frames that follow."""
    import cv2

    clip, size = tmp_path / "clip.mp4", (320, 214)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, size)
    for _ in range(4):
        writer.write(cv2.cvtColor(cv2.resize(image, size), cv2.COLOR_RGB2BGR))
    writer.release()
    srv = Server(parity_model_dir, tmp_path / "server.log", "--source", str(clip)).start()
    client = Client(srv.port)
    try:

        def frame_after(number: int) -> tuple[int, np.ndarray]:
            for _ in range(600):
                reply = client.get("/v1/live/frame.jpg")
                if reply.status == 200 and int(reply.headers["x-frame-number"]) > number:
                    return int(reply.headers["x-frame-number"]), np.asarray(Image.open(io.BytesIO(reply.body))).astype(int)
                time.sleep(0.2)
            raise AssertionError(f"no live frame after {number}:\n{srv.log()}")

        number, plain = frame_after(0)
        status = client.get("/v1/live").json()
        assert plain.shape == (214, 320, 3) and status["width"] == 320 and status["frame_age_ms"] > 0
        assert client.post_json("/v1/live/prompts", {"points": [[400, 10]], "labels": [1]}).status == 422
        assert client.post_json("/v1/live/prompts", {"points": [[160, 100]], "labels": [1]}).json()["points"] == 1
        number, _ = frame_after(number)  # may have been segmented before the prompt arrived
        _, prompted = frame_after(number)
        assert (np.abs(prompted - plain).sum(axis=2) > 60).mean() > 0.02  # the mask overlay is drawn
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("GET", "/v1/live.mjpg")
        stream = conn.getresponse()
        assert stream.getheader("content-type").startswith("multipart/x-mixed-replace") and stream.read(64).startswith(b"--frame\r\n")
        conn.close()
    finally:
        srv.stop()


def test_image_cache_is_an_lru_bounded_by_count_and_bytes():
    from tinysam_edge.predictor import ImageSnapshot
    from tinysam_edge.serve.state import ImageCache

    def snapshot(nbytes: int) -> ImageSnapshot:
        return ImageSnapshot(np.zeros(1, np.float32), (1, 1), (1, 1), None, 0, nbytes)

    cache = ImageCache(max_images=3, max_bytes=100)
    a, b = cache.add(snapshot(40)), cache.add(snapshot(40))
    c = cache.add(snapshot(40))  # 120 bytes: the least recently used (a) goes
    assert cache.get(a) is None and cache.get(b) is not None and (len(cache), cache.nbytes) == (2, 80)
    d, e = cache.add(snapshot(10)), cache.add(snapshot(10))  # 4 images: c (b was used since) goes
    assert cache.get(c) is None and all(cache.get(i) is not None for i in (b, d, e))
    big = cache.add(snapshot(500))  # over the byte bound alone: kept, everything else dropped
    assert cache.get(big) is not None and len(cache) == 1 and (cache.hits, cache.misses, cache.evictions) == (5, 2, 5)
