"""Inference jobs of the service: a pool of predictors on worker threads, behind a bounded admission queue."""

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..predictor import PredictorBase
from .errors import ApiError
from .metrics import Metrics

T = TypeVar("T")


class Engine:
    """Runs jobs ``fn(predictor)`` with at most ``workers`` at once, each on a predictor of its own.

    At most ``workers + queue_size`` requests are admitted (decoding their input, waiting for a worker
    at most ``wait_s``, or running); past either bound the request is refused with 503 and a ``Retry-After`` estimated from recent job times, so memory never
    grows with the load. Predictors are built by ``factory`` on a background thread (``start``);
    until they all are, jobs get 503 and ``ready`` is False.
    """

    def __init__(self, factory: Callable[[], PredictorBase], workers: int, queue_size: int, wait_s: float, metrics: Metrics) -> None:
        self._factory, self.workers, self.limit, self.wait_s = factory, workers, workers + queue_size, wait_s
        self._metrics = metrics
        self._pool: queue.SimpleQueue[PredictorBase] = queue.SimpleQueue()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tinysam-infer")
        self._slots: asyncio.Semaphore | None = None
        self._admitted = 0
        self._job_s = 1.0  # running mean of a job's seconds, for Retry-After
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self.load_error: str | None = None
        self.description = ""

    @property
    def ready(self) -> bool:
        """Whether every predictor is built (models read and compiled)."""
        return self._loaded.is_set() and self.load_error is None

    def start(self) -> None:
        """Build the predictors on a background thread."""
        self._loader = threading.Thread(target=self._load, name="tinysam-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            for _ in range(self.workers):
                predictor = self._factory()
                self._pool.put(predictor)
            self.description = predictor.describe()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and every job instead of killing the server
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._loaded.set()

    def _busy(self, why: str) -> ApiError:
        self._metrics.rejected.inc()
        retry = max(1, math.ceil(self._job_s * self.limit / self.workers))
        return ApiError(503, f"{why}; retry in about {retry} s", {"Retry-After": str(retry)})

    def check_free(self) -> None:
        """``ApiError`` 503 when the models are not ready or the queue is full (nothing reserved)."""
        if not self.ready:
            raise (
                ApiError(503, f"models failed to load: {self.load_error}")
                if self.load_error
                else ApiError(503, "models are still loading", {"Retry-After": "5"})
            )
        if self._admitted >= self.limit:
            raise self._busy(f"server busy: {self._admitted} inference jobs running or queued")

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """Hold one of the ``workers + queue_size`` places (503 when none is free) while a request is
        decoded and its jobs run (``infer``); a request whose body is still arriving holds none."""
        self.check_free()
        self._admitted += 1
        self._metrics.queue_depth.set(self._admitted)
        try:
            yield
        finally:
            self._admitted -= 1
            self._metrics.queue_depth.set(self._admitted)

    async def infer(self, fn: Callable[[PredictorBase], T]) -> T:
        """Run ``fn`` on a free predictor in a worker thread, inside ``admission``; 503 after ``wait_s`` without a worker."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        start = time.perf_counter()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except asyncio.TimeoutError:
            raise self._busy(f"no inference slot became free within {self.wait_s:g} s") from None
        self._metrics.stages.labels("queue_wait").observe(time.perf_counter() - start)
        try:
            start = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)
            self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - start)
            return result
        finally:
            self._slots.release()

    def _call(self, fn: Callable[[PredictorBase], T]) -> T:
        predictor = self._pool.get()
        try:
            return fn(predictor)
        finally:
            self._pool.put(predictor)

    def close(self) -> None:
        """Stop the worker threads once their jobs end, and let a model still compiling finish
        (OpenVINO aborts the process if it exits in the middle of a compile)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._loader is not None:
            self._loader.join()
