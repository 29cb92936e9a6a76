"""The load generator: closed-loop HTTP clients in their own process.

A client inside the process that holds the server (or the Ray driver) would slow what it
measures, so ``LoadGenerator`` starts ``python -m bench.loadgen`` once and sends it one JSON
line per measurement; the child answers with one JSON line of figures. Each measurement is
bounded in time (a warm-up of at most 120 s, a window of ``seconds``, at most 120 s) and in
requests (``max_requests``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Load:
    """One measurement: `clients` closed-loop clients POSTing to `url` + `path`."""

    url: str
    path: str  # /v1/embeddings or /v1/chat/completions
    model: str
    clients: int
    seconds: float
    max_requests: int
    max_tokens: int = 16  # chat only
    images: int = 64  # distinct images the clients cycle through
    image_size: int = 224


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


class LoadGenerator:
    """The parent's handle on the load generator process."""

    def __init__(self):
        from bench.servers import child_env

        self._child = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1, env=child_env(),
        )

    def run(self, load: Load) -> dict:
        """Run one measurement and return its figures (see `_measure`)."""
        self._child.stdin.write(json.dumps(asdict(load)) + "\n")
        self._child.stdin.flush()
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited (code {self._child.poll()})")
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"the load generator failed: {result['error']}")
        return result

    def close(self) -> None:
        if self._child.poll() is None:
            self._child.stdin.close()
            try:
                self._child.wait(10)
            except subprocess.TimeoutExpired:
                self._child.kill()

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_BODIES: dict[tuple, list[bytes]] = {}


def _bodies(load: Load) -> list[bytes]:
    from bench.payloads import chat_body, embedding_body, jpeg_images

    key = (load.path, load.model, load.images, load.image_size, load.max_tokens)
    if key not in _BODIES:
        images = jpeg_images(load.images, load.image_size, seed=1)
        if load.path.endswith("/embeddings"):
            bodies = [embedding_body(load.model, image) for image in images]
        else:
            bodies = [chat_body(load.model, image, load.max_tokens) for image in images]
        _BODIES[key] = [json.dumps(body).encode() for body in bodies]
    return _BODIES[key]


async def _measure(load: Load) -> dict:
    """Closed loop: each client sends its next request as soon as its last one is answered.

    Warm-up runs until every client has had an answer (the loop is then in steady state,
    whatever the latency), then the window runs for ``seconds`` (and until at least one
    answer arrives). Throughput is Little's law over the window's answers, clients / mean
    latency: exact for a closed loop in steady state, and free of the quantisation a count
    suffers when answers come in batches of 32 every few seconds. Requests still in flight
    when the window closes are dropped.
    """
    import httpx

    bodies = _bodies(load)
    chat = "chat" in load.path
    answered: set[int] = set()
    window: list[tuple[float, int, int]] = []  # (latency, tokens, batch size)
    statuses: Counter = Counter()
    issued = 0
    phase = {"window_start": None}

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < load.max_requests:
            body = bodies[(number + issued) % len(bodies)]
            issued += 1
            sent = time.perf_counter()
            try:
                response = await http.post(load.url + load.path, content=body,
                                           headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                continue
            statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            done = time.perf_counter()
            answered.add(number)
            if phase["window_start"] is not None and done >= phase["window_start"]:
                tokens = response.json()["usage"]["completion_tokens"] if chat else 0
                batch = int(response.headers.get("x-raysight-batch-size", 0))
                window.append((done - sent, tokens, batch))

    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client(i, http)) for i in range(load.clients)]
        while len(answered) < load.clients and time.perf_counter() - started < 120:
            await asyncio.sleep(0.02)
        phase["window_start"] = opened = time.perf_counter()
        while (time.perf_counter() - opened < load.seconds or not window) and \
                time.perf_counter() - opened < 120 and issued < load.max_requests:
            await asyncio.sleep(0.02)
        closed = time.perf_counter()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [latency for latency, _, _ in window]
    batches = [batch for _, _, batch in window if batch]
    mean_latency = sum(latencies) / len(latencies) if latencies else float("inf")
    per_request_tokens = sum(t for _, t, _ in window) / len(window) if window else 0.0
    requests_per_s = load.clients / mean_latency
    return {
        "ok": len(window),
        "statuses": {str(k): v for k, v in statuses.items()},
        "warmup_s": opened - started,
        "window_s": closed - opened,
        "requests_per_s": requests_per_s,
        "counted_per_s": len(window) / (closed - opened),
        "tokens_per_s": requests_per_s * per_request_tokens,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "mean_batch": sum(batches) / len(batches) if batches else None,
    }


def main() -> int:
    """Serve measurements: one JSON line in, one JSON line out, until stdin closes."""
    for line in sys.stdin:
        try:
            result = asyncio.run(_measure(Load(**json.loads(line))))
        except Exception as exc:  # noqa: BLE001 - report to the parent, keep serving
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
