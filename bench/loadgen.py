"""The load generator: closed-loop HTTP clients in their own process.

A client inside the process that holds the server (or the Ray driver) would slow what it
measures, so ``LoadGenerator`` starts ``python -m bench.loadgen`` once and sends it one JSON
line per measurement; the child answers with one JSON line of figures. Each measurement is
bounded in time (warm-up and each window: at most 120 s each; the settling request after
it: 300 s) and in requests (``max_requests``).
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
    seconds: float  # one window
    windows: int  # consecutive windows: the repeats
    max_requests: int
    max_tokens: int = 16  # chat only
    image_size: int = 224
    # Processes whose CPU seconds are read as the windows open and close (see `_measure`).
    cpu_pids: tuple[int, ...] = ()


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


class _Bodies:
    """A request body with a new image for every request: raysight caches processed images
    and image features by their pixels, and traffic of distinct images must not hit them."""

    def __init__(self, load: Load):
        import numpy as np

        self.load = load
        self.rng = np.random.default_rng()  # a fresh stream per measurement

    def next(self) -> bytes:
        import io

        from PIL import Image

        from bench.payloads import chat_body, embedding_body

        buffer = io.BytesIO()
        coarse = Image.fromarray(self.rng.integers(0, 255, (6, 6, 3), dtype="uint8"))
        side = self.load.image_size
        coarse.resize((side, side), Image.BILINEAR).save(buffer, "JPEG", quality=90)
        if self.load.path.endswith("/embeddings"):
            body = embedding_body(self.load.model, buffer.getvalue())
        else:
            body = chat_body(self.load.model, buffer.getvalue(), self.load.max_tokens)
        return json.dumps(body).encode()


async def _measure(load: Load) -> dict:
    """Closed loop: each client sends its next request as soon as its last one is answered.

    Warm-up runs until every client has had an answer (the loop is then in steady state,
    whatever the latency); then ``windows`` windows of ``seconds`` each (each lasting until
    at least one answer arrives) are the repeats: snapshots a window apart, not independent
    runs, as a new run would cost a warm-up and a settling of its own; then the clients hang
    up and one more request is sent and answered, so the server is idle when the next
    measurement starts (see `_settle`).

    The CPU seconds of ``cpu_pids`` are read when the windows open and when they close, so the
    cores those processes use in steady state come with the figures (``steady_cpu``): a
    split over the whole measurement would also count the warm-up, the requests cancelled
    at the hang-up and the settling wait, none of which are in the throughput.

    Each window's figures come from a snapshot at its end of every client's latest answer to
    a request sent after the warm-up (the first window lasts until there is one per client):
    throughput is Little's law over them (clients / mean latency), exact for a closed loop in
    steady state and free of the quantisation a count suffers when answers come in batches of
    32 every few seconds. The answers *within* a short window would not do: when one cycle
    of batches takes longer than the window, they can all come from one batch, whose
    latency is not the mean (measured: 248 tokens/s "served" against a 157 tokens/s ceiling).
    """
    import httpx

    bodies = _Bodies(load)
    chat = "chat" in load.path
    answered: set[int] = set()
    # Each client's latest answer to a request sent after the warm-up: (latency,
    # completion tokens, batch size, the server's queue and model ms or None: server_timing).
    latest: dict[int, tuple] = {}
    steady_from = float("inf")  # when the warm-up ended
    # Per window: the answers that came in it, and the snapshot of `latest` at its end.
    windows: list[list[tuple]] = []
    snapshots: list[list[tuple]] = []
    statuses: Counter = Counter()
    issued = 0
    stop = False

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        while not stop and issued < load.max_requests:
            body = bodies.next()
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
            answered.add(number)
            tokens = response.json()["usage"]["completion_tokens"] if chat else 0
            batch = int(response.headers.get("x-raysight-batch-size", 0))
            answer = (time.perf_counter() - sent, tokens, batch,
                      *server_timing(response.headers.get("server-timing", "")))
            if sent >= steady_from:
                latest[number] = answer
            if windows and not stop:
                windows[-1].append(answer)

    async def wait(condition, limit_s: float) -> None:
        began = time.perf_counter()
        while not condition() and time.perf_counter() - began < limit_s:
            await asyncio.sleep(0.02)

    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client(i, http)) for i in range(load.clients)]
        await wait(lambda: len(answered) == load.clients, 120)
        steady_from = time.perf_counter()
        cpu_before = cpu_seconds_of(load.cpu_pids)
        warmup_s = steady_from - started
        for window in range(load.windows):
            windows.append([])
            opened = time.perf_counter()
            # The first window lasts until every client has an answer to a request it sent
            # after the warm-up, so every snapshot holds one steady-state answer per client.
            await wait(lambda: time.perf_counter() - opened >= load.seconds and windows[-1]
                       and (window > 0 or len(latest) == load.clients), 120)
            snapshots.append(list(latest.values()))
        stop = True
        measured_s = time.perf_counter() - steady_from
        cpu_after = cpu_seconds_of(load.cpu_pids)
        # Hang up rather than wait for the answers in flight: a server that drops what its
        # caller gave up on (raysight does) stops at once, one that does not (Flask's pool)
        # works them off either way, before the probe below is answered.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    settle_s = await _settle(load, bodies)
    return {"clients": load.clients, "statuses": {str(k): v for k, v in statuses.items()},
            "warmup_s": warmup_s,
            "measured_s": measured_s, "settle_s": settle_s,
            "steady_cpu": {str(pid): cpu_after[pid] - cpu_before[pid]
                           for pid in cpu_after if pid in cpu_before},
            "windows": [dict(_figures(load.clients, snapshot), ok=len(answers))
                        for snapshot, answers in zip(snapshots, windows)]}


def cpu_seconds_of(pids) -> dict[int, float]:
    """pid -> user+system CPU seconds of each of `pids` still running (from /proc)."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # ended, or no /proc
            continue
        found[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


async def _settle(load: Load, bodies: _Bodies) -> float:
    """Seconds until one more request is answered: both servers queue in order, so then
    nothing of this measurement is left running when the next one starts."""
    import httpx

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.post(load.url + load.path, content=bodies.next(),
                                   headers={"content-type": "application/json"})
    if response.status_code != 200:
        raise RuntimeError(f"the settling request got {response.status_code}: "
                           f"{response.text[:200]}")
    return time.perf_counter() - began


def server_timing(value: str) -> tuple[float | None, float | None]:
    """(queue ms, model ms) from a Server-Timing header (raysight's: serve_app/routes.py),
    None for what it does not give."""
    durations = {}
    for metric in value.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                durations[name] = float(param[4:])
    return durations.get("queue"), durations.get("model")


def _figures(clients: int, answers: list[tuple]) -> dict:
    """Figures of one snapshot (one answer per client): throughput, latencies, batch, and the
    server's own timing where it gives one (the median answer's wait for its batch and its
    batch's run on the model)."""
    latencies = [answer[0] for answer in answers]
    batches = [answer[2] for answer in answers if answer[2]]
    mean_latency = sum(latencies) / len(latencies) if latencies else float("inf")
    requests_per_s = clients / mean_latency
    tokens = sum(answer[1] for answer in answers) / len(answers) if answers else 0.0
    queue_ms = [answer[3] for answer in answers if answer[3] is not None]
    model_ms = [answer[4] for answer in answers if answer[4] is not None]
    return {
        "queue_ms": percentile(queue_ms, 0.5) if queue_ms else None,
        "model_ms": percentile(model_ms, 0.5) if model_ms else None,
        "ok": len(answers),
        "requests_per_s": requests_per_s,
        "tokens_per_s": requests_per_s * tokens,
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
