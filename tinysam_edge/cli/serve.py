"""``serve``: the HTTP API and browser UI (FastAPI + uvicorn), secure by default."""

import argparse
import ipaddress
import os
import socket
from pathlib import Path

from ..errors import TinySamError
from .options import NON_NEGATIVE_INT, POSITIVE_INT, add_device_options, log, number

API_KEY_ENV = "TINYSAM_EDGE_API_KEY"


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

        from ..serve.app import Settings, create_app
    except ImportError as exc:
        raise TinySamError(f"serve needs the [serve] extra ({exc}); install it with: pip install 'tinysam-edge[serve]'") from None
    from ..devices import check_device, shared_core
    from ..manifest import Manifest
    from ..predictor import Predictor

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is not None and len(api_key) < 16:
        raise TinySamError(
            "the API key must be at least 16 characters (e.g. from: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not is_loopback(args.host) and api_key is None:
        raise TinySamError(f"refusing to listen on {args.host} without an API key: pass --api-key or set {API_KEY_ENV} (or bind 127.0.0.1)")
    Manifest.read(args.model_dir)  # a missing or broken model dir or an absent device fails here, not on the first request
    check_device(shared_core(), args.device)
    check_port(args.host, args.port)
    if args.source is not None and not args.source.isdigit() and "://" not in args.source and not Path(args.source).is_file():
        raise TinySamError(f"--source {args.source!r} is neither a camera index nor a video file")
    threads = max(1, (os.cpu_count() or 1) // args.concurrency) if args.concurrency > 1 else None
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
    )
    app = create_app(lambda: Predictor(args.model_dir, device=args.device, precision=args.precision, num_threads=threads), settings)
    log(f"tinysam-edge serve: http://{args.host}:{args.port}/ ({'API key required' if api_key else 'no API key: loopback only'})")
    # limit_concurrency bounds open connections (uvicorn answers 503 past it); the engine's queue bounds inference jobs
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_keep_alive=5,
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=10,  # open MJPEG streams must not hold a shutdown forever
    )
    return 0


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
    p.add_argument("--cache-images", type=POSITIVE_INT, default=32, help="images whose embeddings are kept (LRU) (default: %(default)s)")
    p.add_argument(
        "--cache-mb", type=POSITIVE_INT, default=1024, help="memory for kept embeddings and decoder state, MiB (default: %(default)s)"
    )
    p.add_argument(
        "--max-connections", type=POSITIVE_INT, default=64, help="open connections before uvicorn answers 503 (default: %(default)s)"
    )
    p.add_argument(
        "--source", help="camera index or video file to segment live at /v1/live.mjpg, with prompts set from the page (a file loops)"
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="(default: %(default)s)")
    p.set_defaults(func=cmd_serve)
