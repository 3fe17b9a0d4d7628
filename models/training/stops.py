"""Stops that lose nothing: Ctrl-C and SIGTERM become a request the training loop honours between two steps.

The loop saves its resumable state at the next step boundary and only then lets the signal take its
usual course (the previous handler: the CLI's one line and exit 130 / 143). A second signal while the
state is being written acts at once.
"""

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A context that defers SIGINT/SIGTERM: ``signum`` says which arrived; ``deliver()`` acts on it as if it came now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])  # a second one is not deferred

    def __enter__(self) -> "StopRequest":  # noqa: PYI034 - typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            self.previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def deliver(self) -> None:
        """Restore the previous handlers and run the one of the signal that arrived (e.g. raise ``KeyboardInterrupt``)."""
        signum, handler = self.signum, self.previous.get(self.signum)
        self.__exit__()
        if callable(handler):
            handler(signum, None)
        signal.raise_signal(signum)  # the default action (SIG_DFL), or a handler that returned
