"""generation_mixed: the static batcher against the continuous scheduler under an open loop.

Workload (issue #19): Poisson arrivals at about 80% of the static batcher's capacity, one
image per request, mixed max_tokens (25% at 64, 75% at 4-8), the Qwen2-VL-shaped bench
model. Both schedulers serve the same arrival times, images and token limits, in segments
of the arrivals taken in alternating order (static then continuous, then the other way
round), each through the model replica's own code (serve_app ModelServer.generate_stream:
preprocess on a worker thread, then its batcher), in this process without HTTP or Ray: the
HTTP and Ray hops cost both schedulers the same and would only add noise here.

Capacity: a burst of the same mix (twice the batch size) sent at once; requests answered
per second while it drains. The static batcher's sets the offered load; the continuous
scheduler's is measured on the same burst, the throughput comparison at saturation (under
the open loop both deliver what is offered, so their tokens/s can only tie).

Closed loop: online_generation's workload (8 clients, 16 new tokens each, no think time)
through both, alternating order over the repeats: continuous batching must not make the
uniform closed-loop case slower.

Figures per variant: p50 latency of the short requests, p99 time to first token (first text
piece of the stream), output tokens/s over the run (first arrival to last answer), p50
latency of the long ones, and the load average while it ran (the machine is shared: only
the ratios measured side by side mean much).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Callable

from bench.loadgen import percentile
from bench.payloads import PROMPT
from bench.report import median_row, row
from bench.settings import BenchSettings

SCENARIO = "generation_mixed"
LONG_TOKENS = 64
SHORT_TOKENS = (4, 8)
LONG_SHARE = 0.25
# The closed-loop check: online_generation's workload (16 new tokens, 8 clients).
CLOSED_TOKENS = 16
CLOSED_CLIENTS = 8
# The open loop's arrivals run in this many segments, each on both schedulers in turn.
MIXED_SEGMENTS = 4


@dataclass(frozen=True)
class Arrival:
    at_s: float
    max_tokens: int
    image: int  # index into the images


@dataclass
class Outcome:
    max_tokens: int
    latency_s: float
    ttft_s: float
    tokens: int


def workload(count: int, rate: float, seed: int = 0) -> list[Arrival]:
    """`count` arrivals of a Poisson process at `rate` per second with the mixed limits."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, count)
    times = np.cumsum(gaps) - gaps[0]
    limits = [LONG_TOKENS if rng.random() < LONG_SHARE
              else int(rng.integers(SHORT_TOKENS[0], SHORT_TOKENS[1] + 1)) for _ in range(count)]
    return [Arrival(float(t), m, i) for i, (t, m) in enumerate(zip(times, limits))]


def _server(folder: str, scheduler: str, batch: int):
    from raysight.spec import ModelSpec
    from serve_app.deployment import ModelServer

    spec = ModelSpec(model=folder, name=f"vlm-{scheduler}", task="generate",
                     scheduler=scheduler, max_batch_size=batch, max_running_sequences=batch,
                     generation={"max_new_tokens": LONG_TOKENS})
    return ModelServer(spec)


def _request(image, max_tokens: int):
    from raysight.engines.generate import GenerateRequest

    return GenerateRequest.from_prompt(PROMPT, image, max_new_tokens=max_tokens, temperature=0.0)


async def _one(server, image, max_tokens: int, start: float) -> Outcome:
    from serve_app.stream_events import Delta, Failed, Final

    first = None
    tokens = 0
    async for event in server.generate_stream(_request(image, max_tokens)):
        if isinstance(event, Delta) and first is None:
            first = time.perf_counter()
        elif isinstance(event, Final):
            tokens = event.result.completion_tokens
        elif isinstance(event, Failed):
            raise RuntimeError(f"a bench request failed: {event.error}")
    done = time.perf_counter()
    return Outcome(max_tokens, done - start, (first or done) - start, tokens)


async def _open_loop(server, arrivals: list[Arrival], images: list) -> tuple[list[Outcome], float]:
    began = time.perf_counter()

    async def arrive(arrival: Arrival) -> Outcome:
        await asyncio.sleep(max(0.0, began + arrival.at_s - time.perf_counter()))
        return await _one(server, images[arrival.image], arrival.max_tokens, time.perf_counter())

    outcomes = await asyncio.gather(*(arrive(a) for a in arrivals))
    return list(outcomes), time.perf_counter() - began


async def _closed_loop(server, clients: int, seconds: float, images: list) -> float:
    """Streamed text pieces per second (about one per token) of `clients` closed-loop
    clients asking for CLOSED_TOKENS each, counted up to the window's end: pieces of answers
    still running count too, so a window shorter than a few answers is still fair."""
    from serve_app.stream_events import Delta

    began = time.perf_counter()
    end = began + seconds
    pieces = 0

    async def client(index: int) -> None:
        nonlocal pieces
        turn = 0
        while time.perf_counter() < end:
            image = images[(index * 7 + turn) % len(images)]
            stream = server.generate_stream(_request(image, CLOSED_TOKENS))
            async for event in stream:
                if time.perf_counter() >= end:
                    break
                pieces += isinstance(event, Delta)
            await stream.aclose()  # a client that stops reading: its sequence is dropped
            turn += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return pieces / seconds


async def _burst(server, arrivals: list[Arrival], images: list) -> float:
    """Requests per second while a burst of `arrivals` (all at once) drains."""
    began = time.perf_counter()
    await asyncio.gather(*(_one(server, images[a.image], a.max_tokens, began) for a in arrivals))
    return len(arrivals) / (time.perf_counter() - began)


def _figures(variant: str, outcomes: list[Outcome], seconds: float, load: float) -> list[dict]:
    short = [o.latency_s * 1000 for o in outcomes if o.max_tokens < LONG_TOKENS]
    long = [o.latency_s * 1000 for o in outcomes if o.max_tokens >= LONG_TOKENS]
    ttft = [o.ttft_s * 1000 for o in outcomes]
    tokens = sum(o.tokens for o in outcomes)
    extra = {"requests": len(outcomes)}
    return [
        row(SCENARIO, variant, "short_p50_ms", round(percentile(short, 0.5), 1), unit="ms", **extra),
        row(SCENARIO, variant, "ttft_p99_ms", round(percentile(ttft, 0.99), 1), unit="ms", **extra),
        row(SCENARIO, variant, "ttft_p50_ms", round(percentile(ttft, 0.5), 1), unit="ms", **extra),
        row(SCENARIO, variant, "long_p50_ms", round(percentile(long, 0.5), 1), unit="ms", **extra),
        row(SCENARIO, variant, "tokens_per_s", round(tokens / seconds, 2), unit="tok/s", **extra),
        row(SCENARIO, variant, "load_average_1m", round(load, 2), **extra),
    ]


def generation_mixed(folder: str, settings: BenchSettings,
                     log: Callable[[str], None]) -> list[dict]:
    from bench.payloads import jpeg_images

    batch = settings.chat_max_batch_size if settings.quick else 8
    count = 16 if settings.quick else settings.mixed_requests
    images = _decoded(jpeg_images(count + batch * 2, seed=19))
    servers = {name: _server(folder, name, batch) for name in ("static", "continuous")}
    try:
        return asyncio.run(_measure(servers, batch, count, images, settings, log))
    finally:
        for server in servers.values():
            server.batcher.close()


async def _measure(servers: dict, batch: int, count: int, images: list,
                   settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    for server in servers.values():  # warm up both (first-call costs, allocator)
        await _burst(server, workload(2, 1.0, seed=1), images[-2:])
    burst = workload(batch * 2, 1.0, seed=2)
    capacity = await _burst(servers["static"], burst, images[count:])
    rate = 0.8 * capacity
    log(f"  static capacity {capacity:.2f} req/s on the mix; offered {rate:.2f} req/s")
    rows = [row(SCENARIO, "static", "capacity_rps", round(capacity, 3), unit="req/s"),
            row(SCENARIO, "static", "offered_rps", round(rate, 3), unit="req/s")]
    # The same burst drained by the continuous scheduler: its capacity on the mix.
    continuous = await _burst(servers["continuous"], burst, images[count:])
    rows.append(row(SCENARIO, "continuous", "capacity_rps", round(continuous, 3), unit="req/s"))
    log(f"  continuous capacity {continuous:.2f} req/s on the same burst")
    arrivals = workload(count, rate, seed=3)
    # Segments of the arrivals, each served by both schedulers in alternating order, so
    # that load drifting on the shared machine falls on both alike.
    outcomes: dict[str, list[Outcome]] = {"static": [], "continuous": []}
    seconds = {"static": 0.0, "continuous": 0.0}
    loads: dict[str, list[float]] = {"static": [], "continuous": []}
    size = max(1, count // MIXED_SEGMENTS)
    for segment, first in enumerate(range(0, count, size)):
        part = arrivals[first:first + size]
        part = [Arrival(a.at_s - part[0].at_s, a.max_tokens, a.image) for a in part]
        order = ("static", "continuous") if segment % 2 == 0 else ("continuous", "static")
        for name in order:
            got, took = await _open_loop(servers[name], part, images)
            outcomes[name] += got
            seconds[name] += took
            loads[name].append(os.getloadavg()[0])
    for name in ("static", "continuous"):
        figures = _figures(name, outcomes[name], seconds[name],
                           sum(loads[name]) / len(loads[name]))
        rows += figures
        log(f"  {name:10s} " + ", ".join(f"{r['metric']} {r['value']}" for r in figures))
    # Closed loop, alternating order over the repeats so drifting load hits both alike.
    closed: dict[str, list[float]] = {"static": [], "continuous": []}
    for repeat in range(settings.repeats):
        order = ("static", "continuous") if repeat % 2 == 0 else ("continuous", "static")
        for name in order:
            closed[name].append(await _closed_loop(servers[name], CLOSED_CLIENTS,
                                                   settings.mixed_closed_window_s, images))
    for name, values in closed.items():
        rows.append(median_row(SCENARIO, name, "closed_tokens_per_s", values, unit="piece/s",
                               closed_clients=CLOSED_CLIENTS))
        log(f"  {name:10s} closed loop, {CLOSED_CLIENTS} clients: "
            + ", ".join(f"{v:.1f}" for v in values) + " tok/s")
    return rows + _ratios(rows)


def _decoded(jpegs: list[bytes]) -> list:
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]


def _ratios(rows: list[dict]) -> list[dict]:
    """continuous / static for each figure the issue sets a target on."""
    value = {(r["variant"], r["metric"]): r["value"] for r in rows}
    out = []
    for metric in ("short_p50_ms", "ttft_p99_ms", "tokens_per_s", "capacity_rps",
                   "closed_tokens_per_s"):
        base = value.get(("static", metric))
        if base:
            out.append(row(SCENARIO, "continuous/static", metric,
                           round(value[("continuous", metric)] / base, 3), unit="ratio"))
    return out
