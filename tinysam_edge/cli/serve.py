"""``serve``: the HTTP API and browser UI (FastAPI + uvicorn), secure by default."""

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TinySamError
from .options import NON_NEGATIVE_INT, POSITIVE_INT, add_device_options, number
from .outputs import log

API_KEY_ENV = "TINYSAM_EDGE_API_KEY"

if TYPE_CHECKING:
    from fastapi import FastAPI


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only resolves to loopback addresses."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise TinySamError(f"--host {host!r} does not resolve: {exc}") from None
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_port(host: str, port: int) -> None:
    """Refuse a port that is already taken before any model is compiled."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TinySamError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until interrupted."""
    try:
        import uvicorn

        from ..serve.connections import ConnectionLimits, GuardedH11Protocol
    except ImportError as exc:
        raise TinySamError(f"serve needs the [serve] extra ({exc}); install it with: pip install 'tinysam-edge[serve]'") from None
    app, api_key = build_app(args)
    check_port(args.host, args.port)
    # the decode threads parse multipart bodies in Python: hand the GIL back to the event loop every 1 ms, not 5 ms,
    # so health checks and admission answer within the latency the deploy page promises during an upload flood
    sys.setswitchinterval(0.001)
    log(f"tinysam-edge serve: http://{args.host}:{args.port}/ ({'API key required' if api_key else 'no API key: loopback only'})")
    # the protocol bounds connections and header time (uvicorn's limit_concurrency would 503 health checks); the engine bounds jobs
    limits = ConnectionLimits(args.max_connections, args.max_client_connections, args.read_timeout)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=GuardedH11Protocol.configured(limits),
        ws="none",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,  # open MJPEG streams must not hold a shutdown forever
    )
    return 0


def build_app(args: argparse.Namespace) -> "tuple[FastAPI, str | None]":
    """The app ``serve``'s options describe, and its API key; every option is checked here, before a model loads."""
    try:
        from ..serve.app import Settings, create_app
    except ImportError as exc:
        raise TinySamError(f"serve needs the [serve] extra ({exc}); install it with: pip install 'tinysam-edge[serve]'") from None
    from ..capture import open_source
    from ..devices import check_device, shared_core
    from ..manifest import Manifest
    from ..predictor import Predictor

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is not None and len(api_key) < 16:
        raise TinySamError(
            "the API key must be at least 16 characters (e.g. from: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if args.body_memory_mb < args.max_upload_mb:
        raise TinySamError(
            f"--body-memory-mb {args.body_memory_mb} is below --max-upload-mb {args.max_upload_mb}: no upload could be received"
        )
    if not is_loopback(args.host) and api_key is None:
        raise TinySamError(f"refusing to listen on {args.host} without an API key: pass --api-key or set {API_KEY_ENV} (or bind 127.0.0.1)")
    Manifest.read(args.model_dir)  # a missing or broken model dir or an absent device fails here, not on the first request
    check_device(shared_core(), args.device)
    if args.source is not None:
        open_source(args.source).release()  # as webcam does: a file that is not a video is refused here, not on a thread
    settings = Settings(
        concurrency=args.concurrency,
        queue_size=args.queue,
        queue_wait_s=args.queue_wait,
        api_key=api_key,
        max_image_pixels=args.max_image_pixels,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        cache_images=args.cache_images,
        cache_bytes=args.cache_mb * 1024 * 1024,
        live_source=args.source,
        read_timeout_s=args.read_timeout,
        body_budget_bytes=args.body_memory_mb * 1024 * 1024,
    )
    # one compiled model for the workers and the live view, a stream for each (load_model shares it between the predictors)
    sessions = args.concurrency + (args.source is not None)
    app = create_app(lambda: Predictor(args.model_dir, device=args.device, precision=args.precision, sessions=sessions), settings)
    return app, api_key


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``."""
    p = sub.add_parser("serve", help="HTTP API and browser UI for an exported model (loopback only unless given an API key)")
    p.add_argument("--model-dir", type=Path, required=True, help="exported OpenVINO model dir (tinysam-edge export)")
    add_device_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs an API key (default: %(default)s)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="(default: %(default)s)")
    p.add_argument(
        "--concurrency", type=POSITIVE_INT, default=1, help="inference jobs run at once, one predictor each (default: %(default)s)"
    )
    p.add_argument(
        "--queue",
        type=NON_NEGATIVE_INT,
        default=8,
        help="jobs that may wait for a worker; more get 503 + Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--queue-wait",
        type=number(float, 0.1, 3600),
        default=30.0,
        help="seconds a job may wait for a worker before 503 (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        help=f"required as 'Authorization: Bearer KEY' on the API (default: ${API_KEY_ENV}; prefer the variable: arguments show in ps)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=number(int, 1, 1 << 28),
        default=4096 * 4096,
        help="largest upload, width x height, checked before decoding (default: %(default)s)",
    )
    p.add_argument("--max-upload-mb", type=number(int, 1, 1024), default=32, help="largest request body in MiB (default: %(default)s)")
    _add_limits(p)
    p.add_argument(
        "--source", help="camera index or video file to segment live at /v1/live.mjpg, with prompts set from the page (a file loops)"
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="(default: %(default)s)")
    p.set_defaults(func=cmd_serve)


def _add_limits(p: argparse.ArgumentParser) -> None:
    """The bounds on memory and connections (slow, heavy and many clients)."""
    p.add_argument("--cache-images", type=POSITIVE_INT, default=32, help="images whose embeddings are kept (LRU) (default: %(default)s)")
    p.add_argument(
        "--cache-mb", type=POSITIVE_INT, default=1024, help="memory for kept embeddings and decoder state, MiB (default: %(default)s)"
    )
    p.add_argument(
        "--max-connections",
        type=POSITIVE_INT,
        default=64,
        help="open connections; past it the oldest one still sending its request header is closed, else 503 (default: %(default)s)",
    )
    p.add_argument(
        "--max-client-connections",
        type=POSITIVE_INT,
        default=8,
        help="open connections from one client address; more get 503 (default: %(default)s)",
    )
    p.add_argument(
        "--read-timeout",
        type=number(float, 0.5, 300),
        default=5.0,
        help="seconds a client may take to send a request header, and to send the next part of a body (default: %(default)s)",
    )
    p.add_argument(
        "--body-memory-mb",
        type=number(int, 1, 1 << 16),
        default=256,
        help="memory for request bodies being received and decoded, MiB; past it 503 (default: %(default)s)",
    )
