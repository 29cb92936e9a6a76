"""Metrics through Ray's metrics API, exported in Prometheus format by each node's metrics agent.

Ingress: requests and latency by route and status. Model replicas: batch sizes and the time
requests wait in the queue for a batch. Prometheus sees them with Ray's prefix:
``ray_raysight_requests_total``, ``ray_raysight_request_latency_s``, ``ray_raysight_batch_size``,
``ray_raysight_queue_wait_s``, ``ray_raysight_model_items_total``. Outside a Ray worker (unit
tests, local clients) every metric is a no-op, so the serving code never checks.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
QUEUE_WAIT_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
BATCH_SIZE_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128]


class _NoOp:
    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict | None = None) -> None:
        pass


def _ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False


def _counter(name: str, description: str, tag_keys: tuple[str, ...]):
    if not _ray_worker():
        return _NoOp()
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=tag_keys)


def _histogram(name: str, description: str, boundaries: list[float], tag_keys: tuple[str, ...]):
    if not _ray_worker():
        return _NoOp()
    from ray.util.metrics import Histogram

    return Histogram(name, description=description, boundaries=boundaries, tag_keys=tag_keys)


class IngressMetrics:
    """Request count and latency, tagged by route and HTTP status."""

    def __init__(self) -> None:
        tags = ("route", "status")
        self.requests = _counter("raysight_requests", "HTTP requests answered.", tags)
        self.latency = _histogram(
            "raysight_request_latency_s", "Time to answer an HTTP request (s).",
            LATENCY_BUCKETS_S, tags,
        )

    def record(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.requests.inc(1.0, tags=tags)
        self.latency.observe(seconds, tags=tags)


class ModelMetrics:
    """Batch sizes and queue waits of one model's replica."""

    def __init__(self, model: str) -> None:
        self.tags = {"model": model}
        keys = ("model",)
        self.batch_size = _histogram(
            "raysight_batch_size", "Items in each model batch.", BATCH_SIZE_BUCKETS, keys
        )
        self.queue_wait = _histogram(
            "raysight_queue_wait_s", "Time a request waited for its batch to start (s).",
            QUEUE_WAIT_BUCKETS_S, keys,
        )
        self.items = _counter("raysight_model_items", "Items the model processed.", keys)

    def record_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size, tags=self.tags)
        self.items.inc(size, tags=self.tags)
        for wait in waits:
            self.queue_wait.observe(wait, tags=self.tags)
