"""Metrics through Ray's metrics API, exported in Prometheus format by each node's metrics agent.

Ingress: requests and latency by route and status. Model replicas: batch sizes and the time
requests wait in the queue for a batch. Prometheus sees them with Ray's prefix:
``ray_raysight_requests_total``, ``ray_raysight_request_latency_s``, ``ray_raysight_batch_size``,
``ray_raysight_queue_wait_s``, ``ray_raysight_model_items_total``, and per cache (tag ``cache``:
preprocess, vision, response) ``ray_raysight_cache_hits_total``, ``..._misses_total``,
``..._evictions_total`` and the gauge ``ray_raysight_cache_bytes``; with the continuous
scheduler, the gauges ``ray_raysight_running_sequences``, ``ray_raysight_waiting_requests``,
``ray_raysight_kv_cache_tokens``, ``ray_raysight_kv_cache_bytes`` and the histograms
``ray_raysight_time_to_first_token_s`` and ``ray_raysight_time_per_output_token_s``. Outside a Ray worker (unit
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

    def set(self, value: float, tags: dict | None = None) -> None:
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


def _gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    if not _ray_worker():
        return _NoOp()
    from ray.util.metrics import Gauge

    return Gauge(name, description=description, tag_keys=tag_keys)


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

    def record_admission(self, running: int, wait: float) -> None:
        """Continuous scheduler: one request joined a running set of `running` sequences
        after waiting `wait` s (the batch-size histogram then holds running-set sizes)."""
        self.batch_size.observe(running, tags=self.tags)
        self.items.inc(1, tags=self.tags)
        self.queue_wait.observe(wait, tags=self.tags)

    def record_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size, tags=self.tags)
        self.items.inc(size, tags=self.tags)
        for wait in waits:
            self.queue_wait.observe(wait, tags=self.tags)


class CacheMetrics:
    """Hits, misses and evictions of one model's caches, and the bytes each holds.

    Engines keep cumulative counts (`engine.cache_stats()`); `record` adds what changed
    since the last call, so it can run after every batch."""

    def __init__(self, model: str) -> None:
        self.model = model
        keys = ("model", "cache")
        self.hits = _counter("raysight_cache_hits", "Cache lookups answered from the cache.", keys)
        self.misses = _counter("raysight_cache_misses", "Cache lookups that had to compute.", keys)
        self.evictions = _counter(
            "raysight_cache_evictions", "Entries dropped to stay within the byte bound.", keys
        )
        self.bytes = _gauge("raysight_cache_bytes", "Bytes a cache holds now.", keys)
        self._seen: dict[str, tuple[int, int, int]] = {}

    def record(self, stats: dict) -> None:
        """`stats`: cache name -> CacheStats (cumulative)."""
        for name, now in stats.items():
            tags = {"model": self.model, "cache": name}
            hits, misses, evictions = self._seen.get(name, (0, 0, 0))
            for counter, delta in ((self.hits, now.hits - hits), (self.misses, now.misses - misses),
                                   (self.evictions, now.evictions - evictions)):
                if delta > 0:
                    counter.inc(delta, tags=tags)
            self.bytes.set(now.bytes, tags=tags)
            self._seen[name] = (now.hits, now.misses, now.evictions)


TTFT_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
TPOT_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]


class SchedulerMetrics:
    """The continuous scheduler of one model: its running set, queue, KV cache use and the
    two per-token latencies users feel (first token, then each next one)."""

    def __init__(self, model: str) -> None:
        self.tags = {"model": model}
        keys = ("model",)
        self.running = _gauge("raysight_running_sequences", "Sequences decoding now.", keys)
        self.waiting = _gauge("raysight_waiting_requests",
                              "Prepared requests waiting to join the running batch.", keys)
        self.kv_tokens = _gauge("raysight_kv_cache_tokens",
                                "Token slots the batch KV cache holds (padding included).", keys)
        self.kv_budget = _gauge("raysight_kv_cache_budget_tokens",
                                "The KV-cache budget in token slots (kv_cache_tokens).", keys)
        self.kv_bytes = _gauge("raysight_kv_cache_bytes", "Bytes the batch KV cache holds.", keys)
        self.ttft = _histogram("raysight_time_to_first_token_s",
                               "From submission to the first new token (s).", TTFT_BUCKETS_S, keys)
        self.tpot = _histogram("raysight_time_per_output_token_s",
                               "Mean time per new token after the first, per request (s).",
                               TPOT_BUCKETS_S, keys)

    def record_step(self, stats) -> None:
        """`stats`: raysight.scheduler.SchedulerStats after one step."""
        self.running.set(stats.running, tags=self.tags)
        self.waiting.set(stats.waiting, tags=self.tags)
        self.kv_tokens.set(stats.kv_tokens, tags=self.tags)
        self.kv_budget.set(stats.kv_budget_tokens, tags=self.tags)
        self.kv_bytes.set(stats.kv_bytes, tags=self.tags)

    def record_timing(self, what: str, seconds: float) -> None:
        """("ttft" | "tpot", seconds), as the scheduler reports them."""
        histogram = self.ttft if what == "ttft" else self.tpot
        histogram.observe(seconds, tags=self.tags)
