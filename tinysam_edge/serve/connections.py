"""Connection limits uvicorn lacks: a deadline for each request header, and caps on open connections.

uvicorn has no header or body read timeout and no cap per client address (Kludex/uvicorn#157 was closed
without them), and its ``limit_concurrency`` answers every request 503 (health checks included) once idle or
half-sent connections fill it. So this module subclasses its h11 protocol, which the default install always
has (httptools is an optional extra); the body read timeout lives in the ASGI middleware (``app.Guard``).
"""

import asyncio
import json
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ConnectionLimits:
    """``max_connections`` open at once, ``per_client`` from one address, ``header_timeout_s`` to send a request header."""

    max_connections: int = 64
    per_client: int = 8
    header_timeout_s: float = 5.0


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    retry = "retry-after: 1\r\n" if status == 503 else ""  # a refused connection may come back in a second, as every 503 says
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{retry}connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``ConnectionLimits``; build the class of one server with ``configured``.

    A connection waiting for its request (new, or kept alive after an answer) must deliver the whole header
    within ``header_timeout_s`` (408 if it had started, else closed). A connection past ``per_client`` from one
    address is refused with 503. Past ``max_connections``, the oldest connection that is still waiting for its
    request is closed to make room, so probes get in while slow clients hold the rest; if every connection
    is busy with a request, the new one is refused with 503.
    """

    limits: ClassVar[ConnectionLimits]
    peers: ClassVar[dict["GuardedH11Protocol", str]]  # open connections, oldest first -> client address

    @classmethod
    def configured(cls, limits: ConnectionLimits) -> type["GuardedH11Protocol"]:
        """A protocol class for one server (its own limits and table of open connections)."""
        return type(cls.__name__, (cls,), {"limits": limits, "peers": {}})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        address = self.client[0] if self.client else ""
        same = sum(1 for peer in self.peers.values() if peer == address)
        self.peers[self] = address
        if same >= self.limits.per_client:
            self._refuse(503, "Service Unavailable", f"more than {self.limits.per_client} open connections from {address}")
        elif len(self.peers) > self.limits.max_connections and not self._evict_one():
            self._refuse(503, "Service Unavailable", f"all {self.limits.max_connections} connections are busy; retry later")
        else:
            self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the request of a refused connection is read and dropped (see _refuse)
            return
        super().data_received(data)
        if not self._waiting():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._disarm()
        self.peers.pop(self, None)

    def _waiting(self) -> bool:
        """Whether no request is in progress (none yet, or the last one answered)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if not self._waiting() or self.transport.is_closing():
            return
        started = bool(self.conn.trailing_data[0])
        if started:
            self.transport.write(
                _raw_error(408, "Request Timeout", f"request header not received within {self.limits.header_timeout_s:g} s")
            )
        self.transport.close()

    def _evict_one(self) -> bool:
        for peer in self.peers:
            if peer is not self and peer._waiting() and not peer.transport.is_closing():
                self.peers.pop(peer)
                peer.transport.close()
                return True
        return False

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` and end the connection without resetting it.

        Closing at once makes the kernel answer the request the client is still sending with a reset,
        which can discard the unread answer: the client sees a connection error, not a 503 with
        Retry-After. So the answer is followed by end-of-stream, what the client still sends is dropped,
        and the socket closes when the client hangs up, or after at most a second.
        """
        self.peers.pop(self, None)
        self._refused = True
        self.transport.write(_raw_error(status, reason, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(min(1.0, self.limits.header_timeout_s), self.transport.close)
