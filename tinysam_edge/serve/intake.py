"""Request bodies under a memory budget, and the thread pool that parses and decodes them off the event loop."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

T = TypeVar("T")


class Intake:
    """Receives bodies while at most ``budget_bytes`` of them are held, and runs parsers on ``threads`` threads.

    A body reserves its declared ``Content-Length`` (or the route's limit when it has none) before the
    first byte is read: past the budget the request gets 503 unread, so memory for bodies stays under
    the budget however many clients send at once. The event loop only copies bytes: JSON parsing,
    multipart parsing and image decoding run in the pool (``run``), apart from the inference threads.
    """

    def __init__(self, budget_bytes: int, threads: int) -> None:
        self.budget, self.reserved = budget_bytes, 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tinysam-decode")

    @staticmethod
    def declared_size(request: Request, limit: int) -> int:
        """The bytes a body will take: its ``Content-Length``, or ``limit`` without one; 413 past ``limit``.

        Checked before any sign of load, so a body that can never be taken gets 413 whether or not the
        server is busy, and its client does not retry it.
        """
        declared = request.headers.get("content-length")
        need = int(declared) if declared is not None and declared.isdigit() else limit
        if need > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        return need

    @contextlib.asynccontextmanager
    async def body(self, request: Request, need: int) -> AsyncIterator[bytearray]:
        """The whole body (at most ``need`` bytes from ``declared_size``, else 413), held under the budget until the block ends."""
        if self.reserved + need > self.budget:
            raise ApiError(503, "server busy receiving other uploads; retry in about 2 s", {"Retry-After": "2"})
        self.reserved += need
        data = bytearray()
        try:
            try:
                async for chunk in request.stream():
                    data += chunk
                    if len(data) > need:
                        raise ApiError(413, f"request body over {need} bytes")
            except ClientDisconnect:  # nobody to answer; not a server error worth a traceback in the log
                raise ApiError(400, "the client went away before its body arrived") from None
            yield data
        finally:
            data.clear()
            self.reserved -= need

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on a parser thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Stop the parser threads once their work ends."""
        self._pool.shutdown(wait=False, cancel_futures=True)
