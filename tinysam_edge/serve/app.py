"""The FastAPI app of ``tinysam-edge serve``: JSON routes over an ``Engine`` of predictors and an ``ImageCache``."""

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..predictor import ImageSnapshot, PredictorBase
from . import jobs
from .engine import Engine
from .errors import ApiError
from .intake import Intake
from .live import BOUNDARY, LiveFeed
from .metrics import Metrics
from .schema import parse_everything, parse_prompts
from .state import ImageCache
from .uploads import parse_json, read_upload

T = TypeVar("T")
LOG = logging.getLogger("tinysam_edge.serve")
_ID_ROUTE = re.compile(r"^/v1/images/[^/]+/")
#: Answered without the API key: liveness, readiness and the static page (which holds no data).
_OPEN_PATHS = ("/", "/app.js", "/healthz", "/readyz")
#: Largest JSON body (a predict body with the most points is a few kB).
MAX_JSON_BYTES = 1 << 20
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'"),
]


@dataclass(frozen=True)
class Settings:
    """What one server runs with (the ``serve`` options)."""

    concurrency: int = 1
    queue_size: int = 8
    queue_wait_s: float = 30.0
    api_key: str | None = None
    max_image_pixels: int = 4096 * 4096
    max_upload_bytes: int = 32 * 1024 * 1024
    cache_images: int = 32
    cache_bytes: int = 1024 * 1024 * 1024
    live_source: str | None = None
    read_timeout_s: float = 5.0
    body_budget_bytes: int = 256 * 1024 * 1024
    decode_threads: int = 2


class Guard:
    """ASGI middleware: API key, request body limit and read timeout, security headers and per-route request metrics."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = _ID_ROUTE.sub("/v1/images/{id}/", scope["path"])
        status, start = [500], time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _answer(send_with_headers, refusal)
            else:
                await self.app(scope, self._limited(receive), send_with_headers)
        finally:
            known = route in _KNOWN_ROUTES
            self.metrics.requests.labels(route if known else "other", str(status[0])).inc()
            self.metrics.latency.labels(route if known else "other").observe(time.perf_counter() - start)

    def _refusal(self, scope: Scope) -> ApiError | None:
        headers = dict(scope["headers"])
        key = self.settings.api_key
        if key and scope["path"] not in _OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            given = headers.get(b"x-api-key", b"") or (token.strip() if scheme.lower() == b"bearer" else b"")
            if not hmac.compare_digest(given, key.encode()):
                return ApiError(
                    401,
                    "missing or wrong API key (send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.settings.max_upload_bytes):
            return ApiError(413, f"request body over {self.settings.max_upload_bytes} bytes")
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that refuses a body over the limit (413) and a client that sends none of it for ``read_timeout_s`` (408)."""
        received, done = [0], [False]

        async def limited() -> Message:
            if done[0]:  # the body is in; now only a disconnect can come, whenever
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.settings.read_timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(
                    408, f"request body stalled: nothing received for {self.settings.read_timeout_s:g} s", {"Connection": "close"}
                ) from None
            done[0] = not message.get("more_body", False)
            received[0] += len(message.get("body", b""))
            if received[0] > self.settings.max_upload_bytes:
                raise ApiError(413, f"request body over {self.settings.max_upload_bytes} bytes")
            return message

        return limited


async def _answer(send: Send, error: ApiError) -> None:
    response = _error_response(error)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


_KNOWN_ROUTES = {
    "/",
    "/app.js",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/images",
    "/v1/segment",
    "/v1/live",
    "/v1/live/frame.jpg",
    "/v1/live.mjpg",
    "/v1/live/prompts",
} | {f"/v1/images/{{id}}/{name}" for name in ("predict", "everything")}


def _read_segment(body: bytearray, content_type: str, max_pixels: int) -> tuple[np.ndarray, dict]:
    """A /v1/segment upload: its decoded image and the JSON object of its ``prompts`` field."""
    image, fields = read_upload(body, content_type, max_pixels)
    return image, parse_json(fields.get("prompts", ""))


def _static(name: str, media_type: str) -> Response:
    return Response(resources.files(__package__).joinpath("static", name).read_bytes(), media_type=media_type)


class Api:
    """The routes of one server, over its engine, cache and metrics."""

    def __init__(
        self, engine: Engine, intake: Intake, cache: ImageCache, metrics: Metrics, settings: Settings, live: LiveFeed | None
    ) -> None:
        self.engine, self.intake, self.cache, self.metrics, self.settings = engine, intake, cache, metrics, settings
        self.live = live

    def register(self, app: FastAPI) -> None:
        """Add every route to ``app``."""
        for path, endpoint in (
            ("/", self.index),
            ("/app.js", self.script),
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/metrics", self.prometheus),
            ("/v1/live", self.live_status),
            ("/v1/live/frame.jpg", self.live_frame),
            ("/v1/live.mjpg", self.live_stream),
        ):
            app.add_api_route(path, endpoint, methods=["GET", "HEAD"])
        for path, endpoint in (
            ("/v1/live/prompts", self.live_prompts),
            ("/v1/images", self.add_image),
            ("/v1/images/{image_id}/predict", self.predict),
            ("/v1/images/{image_id}/everything", self.everything),
            ("/v1/segment", self.segment),
        ):
            app.add_api_route(path, endpoint, methods=["POST"])

    async def index(self) -> Response:
        return _static("index.html", "text/html; charset=utf-8")

    async def script(self) -> Response:
        return _static("app.js", "text/javascript; charset=utf-8")

    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        engine = self.engine
        if engine.ready:
            return JSONResponse({"ready": True, "backend": engine.description, "workers": engine.workers})
        return _error_response(
            ApiError(503, f"models failed to load: {engine.load_error}" if engine.load_error else "models are still loading")
        )

    async def prometheus(self) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    def _live(self) -> LiveFeed:
        if self.live is None:
            raise ApiError(404, "no live source: start the server with --source CAMERA_INDEX|FILE")
        return self.live

    async def live_status(self) -> dict:
        return self._live().status()

    async def live_frame(self) -> Response:
        number, jpeg = self._live().latest()
        return Response(jpeg, media_type="image/jpeg", headers={"X-Frame-Number": str(number), "Cache-Control": "no-store"})

    async def live_stream(self, request: Request) -> Response:
        self._live().latest()  # 503 before the first frame, not a broken stream
        if request.method == "HEAD":
            return Response(media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        return StreamingResponse(self.live.mjpeg(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")

    async def live_prompts(self, request: Request) -> dict:
        live = self._live()
        return live.set_prompts(await self._receive(request, None, MAX_JSON_BYTES, parse_json))

    async def _receive(
        self, request: Request, admitted: contextlib.AsyncExitStack | None, limit: int, parse: Callable[..., T], *args: object
    ) -> T:
        """``parse(body, *args)`` on a parser thread, once the whole body has arrived (at most ``limit`` bytes).

        A body declared over ``limit`` gets 413 first, busy or not. With ``admitted``, the request then needs a free place in the engine's queue (503 before its body is
        read) and takes one after its body arrived, held until ``admitted`` closes: an upload refused with 503 is
        never decoded, and one whose body is still arriving holds no place.
        """
        need = self.intake.declared_size(request, limit)
        if admitted is not None:
            self.engine.check_free()
        async with self.intake.body(request, need) as body:
            if admitted is not None:
                await admitted.enter_async_context(self.engine.admission())
            return await self.intake.run(parse, body, *args)

    async def _json(self, request: Request, admitted: contextlib.AsyncExitStack) -> dict:
        return await self._receive(request, admitted, MAX_JSON_BYTES, parse_json)

    async def _upload(self, request: Request, admitted: contextlib.AsyncExitStack, reader: Callable = read_upload) -> tuple:
        """``reader(body, content type, max pixels)`` of a multipart upload (the decoded image and its fields)."""
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with the image file in a field named 'image'")
        return await self._receive(request, admitted, self.settings.max_upload_bytes, reader, content_type, self.settings.max_image_pixels)

    def _cached(self, image_id: str) -> ImageSnapshot:
        snapshot = self.cache.get(image_id)
        if snapshot is None:
            raise ApiError(404, f"unknown image id {image_id[:64]!r} (never uploaded, or evicted from the cache: upload it again)")
        return snapshot

    async def _embed(self, image: np.ndarray) -> tuple[str, ImageSnapshot, dict]:
        snapshot, timings = await self.engine.infer(lambda p: jobs.embed(p, image))
        self.metrics.observe_stages(timings)
        return self.cache.add(snapshot), snapshot, timings

    async def _prompt_response(self, image_id: str, snapshot: ImageSnapshot, body: dict, png: bool, extra: dict, earlier: dict) -> Response:
        prompts = parse_prompts(body, snapshot.original_size)
        masks, scores, updated, timings = await self.engine.infer(lambda p: jobs.predict(p, snapshot, prompts))
        self.cache.put(image_id, updated)
        self.metrics.observe_stages(timings)
        if png:
            best = int(np.argmax(scores))
            return Response(jobs.mask_png(masks[best]), media_type="image/png", headers={"X-Mask-Score": f"{float(scores[best]):.6f}"})
        return JSONResponse({**extra, "masks": jobs.mask_records(masks, scores), "timings_ms": jobs.milliseconds({**earlier, **timings})})

    async def add_image(self, request: Request) -> dict:
        async with contextlib.AsyncExitStack() as admitted:
            image, _ = await self._upload(request, admitted)
            image_id, snapshot, timings = await self._embed(image)
        h, w = snapshot.original_size
        return {"image_id": image_id, "width": w, "height": h, "timings_ms": jobs.milliseconds(timings)}

    async def predict(self, image_id: str, request: Request, format: str = "json") -> Response:
        snapshot, png = self._cached(image_id), _wants_png(format)
        async with contextlib.AsyncExitStack() as admitted:
            return await self._prompt_response(image_id, snapshot, await self._json(request, admitted), png, {}, {})

    async def everything(self, image_id: str, request: Request) -> dict:
        snapshot = self._cached(image_id)
        async with contextlib.AsyncExitStack() as admitted:
            settings = parse_everything(await self._json(request, admitted))
            records, updated, timings = await self.engine.infer(lambda p: jobs.everything(p, snapshot, settings))
        self.cache.put(image_id, updated)
        self.metrics.observe_stages({f"everything_{k}": v for k, v in timings.items()})
        return {"mode": settings.mode, "masks": records, "timings_ms": jobs.milliseconds(timings)}

    async def segment(self, request: Request, format: str = "json") -> Response:
        png = _wants_png(format)
        async with contextlib.AsyncExitStack() as admitted:
            image, body = await self._upload(request, admitted, _read_segment)
            parse_prompts(body, image.shape[:2])  # refuse bad prompts before paying for the encoder
            image_id, snapshot, timings = await self._embed(image)
            h, w = snapshot.original_size
            extra = {"image_id": image_id, "width": w, "height": h}
            return await self._prompt_response(image_id, snapshot, body, png, extra, timings)


def create_app(factory: Callable[[], PredictorBase], settings: Settings) -> FastAPI:
    """The app: ``factory`` builds one predictor per worker (on a background thread at start-up)."""
    cache = ImageCache(settings.cache_images, settings.cache_bytes)
    metrics = Metrics(cache)
    engine = Engine(factory, settings.concurrency, settings.queue_size, settings.queue_wait_s, metrics)
    intake = Intake(settings.body_budget_bytes, settings.decode_threads)
    live = LiveFeed(settings.live_source, factory) if settings.live_source is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if live is not None:
            live.start()
        yield
        intake.close()
        engine.close()
        if live is not None:
            live.stop()

    app = FastAPI(title="tinysam-edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    Api(engine, intake, cache, metrics, settings, live).register(app)
    return app


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return _error_response(ApiError(exc.status_code, str(exc.detail), dict(exc.headers or {})))


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    LOG.exception("request failed", exc_info=exc)
    return _error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))


def _wants_png(format: str) -> bool:
    if format not in ("json", "png"):
        raise ApiError(422, f"format must be 'json' or 'png', got {format[:32]!r}")
    return format == "png"
