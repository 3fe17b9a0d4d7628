"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .state import ImageCache

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Request counts and latencies per route, seconds per inference stage, queue depth and cache counters."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, cache: ImageCache) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tinysam_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "tinysam_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.stages = Histogram(
            "tinysam_stage_seconds", "seconds per inference stage", ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "tinysam_queue_depth", "inference jobs admitted and not finished (running + waiting)", registry=self.registry
        )
        self.rejected = Counter(
            "tinysam_rejected", "jobs refused with 503 because the queue was full or the wait too long", registry=self.registry
        )
        cache_gauges = {
            "tinysam_cache_hits": ("image-id lookups that found the image", lambda: cache.hits),
            "tinysam_cache_misses": ("image-id lookups for unknown or evicted images", lambda: cache.misses),
            "tinysam_cache_evictions": ("images dropped from the LRU", lambda: cache.evictions),
            "tinysam_cache_images": ("images held", lambda: len(cache)),
            "tinysam_cache_bytes": ("bytes of embeddings and decoder state held", lambda: cache.nbytes),
        }
        for name, (text, read) in cache_gauges.items():
            Gauge(name, text, registry=self.registry).set_function(read)

    def observe_stages(self, timings: dict[str, float]) -> None:
        """Record a predictor's ``timings`` (seconds per stage)."""
        for stage, seconds in timings.items():
            self.stages.labels(stage).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
