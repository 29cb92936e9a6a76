"""The 1-client latency target, measured in pairs: one request to the server over HTTP, then
the same image through the engine in this process (the in-process single request), then the
next pair in the other order, and so on.

Why pairs: the target is a difference of ~15 ms between two latencies of ~100-200 ms, and
this machine's speed drifts by more than that within a minute (the ceiling's own repeats have
spread 10-20%). Measured a minute apart, in 1 s windows of ~5 requests each, the difference
was mostly drift: the same server read +3 ms in one run and +46 ms in another. Side by side,
request by request, both halves see the machine at the same speed.

One client, one request at a time, so the client needs no process of its own: it waits on
its socket while the server works, and the engine in this process runs only while the
server is idle. Each pair's image is new (the server's caches must not answer it).
"""

from __future__ import annotations

import http.client
import json
import secrets
import statistics
import time
from typing import Callable
from urllib.parse import urlsplit

from bench.inprocess import EngineRunner
from bench.loadgen import percentile, server_timing
from bench.report import row

WARM_UP_PAIRS = 2  # not counted: the first request of a shape builds kernels on both sides


def paired_latency(url: str, path: str, model_name: str, runner: EngineRunner, pairs: int,
                   scenario: str, variant: str, log: Callable[[str], None]) -> list[dict]:
    """`pairs` alternating (HTTP request, in-process request) pairs of one new image each: the
    p50 of each side and the target's figure, the server's p50 over the in-process one."""
    from raysight.engines.embed import EmbedRequest

    from bench.payloads import data_url, embedding_body, jpeg_images

    # A seed of its own each run: the server's caches have never seen these images.
    images = iter(jpeg_images(WARM_UP_PAIRS + pairs, seed=secrets.randbits(32)))
    client = _Client(url)
    served: list[float] = []
    alone: list[float] = []
    model: list[float] = []  # the replica's own run of each request's batch (Server-Timing)
    try:
        for number in range(WARM_UP_PAIRS + pairs):
            image = next(images)
            body = json.dumps(embedding_body(model_name, image)).encode()
            request = EmbedRequest(image=data_url(image))
            http_first = number % 2 == 0
            if not http_first:
                engine_s = _seconds(lambda: runner.engine.run([request]))
            began = time.perf_counter()
            timing = client.post(path, body)
            http_s = time.perf_counter() - began
            if http_first:
                engine_s = _seconds(lambda: runner.engine.run([request]))
            if number >= WARM_UP_PAIRS:
                served.append(1000 * http_s)
                alone.append(1000 * engine_s)
                _, model_ms = server_timing(timing)
                if model_ms is not None:
                    model.append(model_ms)
    finally:
        client.close()
    served_p50, alone_p50 = percentile(served, 0.5), percentile(alone, 0.5)
    pair_median = statistics.median(s - a for s, a in zip(served, alone))
    extra = {"unit": "ms", "clients": 1, "pairs": pairs}
    rows = [
        row(scenario, variant, "paired_p50_ms", round(served_p50, 1), **extra),
        row(scenario, "ceiling", "paired_p50_ms", round(alone_p50, 1), **extra),
        row(scenario, variant, "p50_over_ceiling_ms", round(served_p50 - alone_p50, 1), **extra,
            median_pair_difference_ms=round(pair_median, 1)),
    ]
    in_replica = ""
    if len(model) == len(served):
        # Where the difference goes: the replica's forward against this process's, and the
        # rest of the request (HTTP, decoding, preprocessing, the hops between them).
        model_p50 = percentile(model, 0.5)
        rows.append(row(scenario, variant, "paired_replica_model_p50_ms", round(model_p50, 1),
                        **extra))
        in_replica = f"; the replica's batch ran {model_p50:.1f} ms (p50)"
    log(f"  1 client, {pairs} pairs side by side: p50 {served_p50:.1f} ms over HTTP, "
        f"{alone_p50:.1f} ms in this process: {served_p50 - alone_p50:+.1f} ms (median pair "
        f"difference {pair_median:+.1f} ms){in_replica}")
    return rows


def _seconds(step: Callable[[], object]) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


class _Client:
    """One kept-alive HTTP connection; a request that does not answer 200 fails the run."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.prefix = parts.path.rstrip("/")
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port or 80,
                                                     timeout=120)

    def post(self, path: str, body: bytes) -> str:
        """POST `body`; the answer's Server-Timing header ("" without one)."""
        self.connection.request("POST", self.prefix + path, body,
                                {"content-type": "application/json"})
        response = self.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{self.prefix}{path} answered {response.status}: {answer[:200]!r}")
        return response.getheader("server-timing", "")

    def close(self) -> None:
        self.connection.close()
