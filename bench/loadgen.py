"""The load generator: closed-loop HTTP clients in their own process.

A client inside the process that holds the server (or the Ray driver) would slow what it
measures, so ``LoadGenerator`` starts ``python -m bench.loadgen`` once and sends it one JSON
line per measurement; the child answers with one JSON line of figures. Each measurement is
bounded in time (``seconds``) and in requests (``max_requests``).
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
    """Closed loop: each client sends its next request when its last one is answered, until
    the time or the request budget runs out; the run ends when the last answer arrives."""
    import httpx

    bodies = _bodies(load)
    chat = "chat" in load.path
    latencies: list[float] = []
    statuses: Counter = Counter()
    batch_sizes: list[int] = []
    tokens = 0
    issued = 0
    started = deadline = 0.0

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal issued, tokens
        while time.perf_counter() < deadline and issued < load.max_requests:
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
            latencies.append(time.perf_counter() - sent)
            if "x-raysight-batch-size" in response.headers:
                batch_sizes.append(int(response.headers["x-raysight-batch-size"]))
            if chat:
                tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        # The clock starts once the client exists (building it takes a few hundred ms).
        started = time.perf_counter()
        deadline = started + load.seconds
        await asyncio.gather(*(client(i, http) for i in range(load.clients)))
    elapsed = time.perf_counter() - started
    ok = len(latencies)
    return {
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": elapsed,
        "requests_per_s": ok / elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "mean_batch": sum(batch_sizes) / len(batch_sizes) if batch_sizes else None,
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
