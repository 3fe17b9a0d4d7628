"""The images a server holds: an LRU of ``ImageSnapshot``s bounded by count and by bytes."""

import secrets
import threading
from collections import OrderedDict

from ..predictor import ImageSnapshot


class ImageCache:
    """Thread-safe LRU from image id to snapshot: at most ``max_images`` entries and ``max_bytes`` bytes.

    The newest entry always stays, even alone over ``max_bytes``. ``hits`` / ``misses`` / ``evictions``
    count lookups and drops since start.
    """

    def __init__(self, max_images: int, max_bytes: int) -> None:
        if max_images < 1 or max_bytes < 1:
            raise ValueError(f"the image cache needs room for one image, got {max_images} images / {max_bytes} bytes")
        self.max_images, self.max_bytes = max_images, max_bytes
        self._items: OrderedDict[str, ImageSnapshot] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, snapshot: ImageSnapshot) -> str:
        """Store a new image; returns its id (128 random bits, hex)."""
        image_id = secrets.token_hex(16)
        self.put(image_id, snapshot)
        return image_id

    def put(self, image_id: str, snapshot: ImageSnapshot) -> None:
        """Store or replace ``image_id`` as the most recently used entry, evicting the least recently used."""
        with self._lock:
            old = self._items.pop(image_id, None)
            self.nbytes -= old.nbytes if old is not None else 0
            self._items[image_id] = snapshot
            self.nbytes += snapshot.nbytes
            while len(self._items) > 1 and (len(self._items) > self.max_images or self.nbytes > self.max_bytes):
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes
                self.evictions += 1

    def get(self, image_id: str) -> ImageSnapshot | None:
        """The snapshot of ``image_id`` (now most recently used), or None when unknown or evicted."""
        with self._lock:
            snapshot = self._items.get(image_id)
            if snapshot is None:
                self.misses += 1
                return None
            self._items.move_to_end(image_id)
            self.hits += 1
            return snapshot
