"""``--engine local``: label in this process. A reader thread decodes ahead while ``workers`` threads run one predictor each."""

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from .annotate import Labeller, decode
from .inputs import ImageItem


def head(item: ImageItem) -> dict:
    """The fields every shard line starts with."""
    return {"index": item.index, "image_id": item.image_id, "file_name": item.file_name}


def iter_local(
    items: list[ImageItem], make_labeller: Callable[[], Labeller], detections: dict[int, list[dict]], workers: int = 1
) -> Iterator[dict]:
    """Shard lines of ``items`` (in their order). ``make_labeller()`` builds one Labeller per worker thread.

    OpenVINO releases the GIL during inference and OpenCV while decoding, so the threads overlap; at
    most ``2 * workers`` images are in flight.
    """
    state = threading.local()

    def work(item: ImageItem, decoded: Future) -> dict:
        if not hasattr(state, "labeller"):
            state.labeller = make_labeller()
        image, error = decoded.result()
        return state.labeller.line(head(item), image, detections.get(item.image_id), error)

    window: deque[Future] = deque()
    readers = ThreadPoolExecutor(1, thread_name_prefix="label-read")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="label-infer")
    finished = False
    try:
        for item in items:
            window.append(pool.submit(work, item, readers.submit(decode, item.path)))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
        finished = True
    finally:
        # stopping early (Ctrl-C, an error): drop what has not started and do not wait for a compile or an
        # inference in flight, which cannot be interrupted; its result would be dropped anyway
        for executor in (pool, readers):
            executor.shutdown(wait=finished, cancel_futures=True)
