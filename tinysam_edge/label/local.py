"""``--engine local``: label in this process. A reader thread decodes ahead while ``workers`` threads run one predictor each."""

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from .annotate import Labeller, decode
from .inputs import ImageItem


def head(item: ImageItem) -> dict:
    """The fields every shard line starts with."""
    return {"index": item.index, "image_id": item.image_id, "file_name": item.file_name}


def threads_per_worker(workers: int, cpus: int | None = None) -> int | None:
    """OpenVINO threads for each of ``workers`` predictors sharing this machine (None: one predictor takes them all)."""
    if workers == 1:
        return None
    return max(1, (cpus or os.cpu_count() or 1) // workers)


def iter_local(
    items: list[ImageItem], make_labeller: Callable[[int | None], Labeller], detections: dict[int, list[dict]], workers: int = 1
) -> Iterator[dict]:
    """Shard lines of ``items`` (in their order). ``make_labeller(num_threads)`` builds one Labeller per worker thread.

    OpenVINO releases the GIL during inference and OpenCV while decoding, so the threads overlap; at
    most ``2 * workers`` images are in flight.
    """
    state = threading.local()
    num_threads = threads_per_worker(workers)

    def work(item: ImageItem, decoded: Future) -> dict:
        if not hasattr(state, "labeller"):
            state.labeller = make_labeller(num_threads)
        image, error = decoded.result()
        return state.labeller.line(head(item), image, detections.get(item.image_id), error)

    window: deque[Future] = deque()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="label-read") as readers,
        ThreadPoolExecutor(workers, thread_name_prefix="label-infer") as pool,
    ):
        try:
            for item in items:
                window.append(pool.submit(work, item, readers.submit(decode, item.path)))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:  # stopping early: drop what has not started
                future.cancel()
