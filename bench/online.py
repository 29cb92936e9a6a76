"""Online scenarios: raysight over HTTP against the model's ceiling (the engine in this
process, batched, no HTTP), the Flask baseline, and raysight with max_batch_size=1.

At each client count the variants take turns, in alternating order, for every repeat, so
load from anything else on the machine falls on all of them alike.
"""

from __future__ import annotations

from typing import Callable

from bench.inprocess import EngineRunner
from bench.loadgen import Load, LoadGenerator
from bench.report import median_row
from bench.servers import flask_server, raysight_server
from bench.settings import BenchSettings

Measure = Callable[[int, float], dict]  # (clients, seconds) -> figures


def _http(loadgen: LoadGenerator, url: str, path: str, model: str,
          settings: BenchSettings) -> Measure:
    def measure(clients: int, seconds: float) -> dict:
        load = Load(url=url, path=path, model=model, clients=clients, seconds=seconds,
                    max_requests=20 * clients + int(seconds * 500),
                    max_tokens=settings.new_tokens)
        result = loadgen.run(load)
        if result["ok"] == 0 or set(result["statuses"]) != {"200"}:
            raise RuntimeError(f"{url}{path} ({model}) answered {result['statuses']}")
        return result

    return measure


def _ceiling(runner: EngineRunner, max_batch_size: int) -> Measure:
    def measure(clients: int, seconds: float) -> dict:
        batch = min(clients, max_batch_size)
        done = runner.measure(batch, seconds)
        return {"requests_per_s": done.items_per_s, "tokens_per_s": done.tokens_per_s,
                "p50_ms": done.batch_p50_ms, "p99_ms": done.batch_p99_ms,
                "mean_batch": float(batch)}

    return measure


def compare(scenario: str, variants: dict[str, Measure], clients_list: tuple[int, ...],
            window_s: float, settings: BenchSettings, throughput_key: str,
            throughput_metric: str, unit: str, log: Callable[[str], None]) -> list[dict]:
    """Measure every variant at every client count, `settings.repeats` times, interleaved
    (ABC, CBA, ...: a load that drifts during the run falls on every variant alike)."""
    rows: list[dict] = []
    names = list(variants)
    for clients in clients_list:
        figures: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(settings.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                figures[name].append(variants[name](clients, window_s))
        for name in names:
            got = figures[name]
            extra = {"clients": clients}
            rows.append(median_row(scenario, name, throughput_metric,
                                   [g[throughput_key] for g in got], unit=unit, **extra))
            rows.append(median_row(scenario, name, "p50_ms", [g["p50_ms"] for g in got],
                                   unit="ms", **extra))
            rows.append(median_row(scenario, name, "p99_ms", [g["p99_ms"] for g in got],
                                   unit="ms", **extra))
            batches = [g["mean_batch"] for g in got if g.get("mean_batch")]
            if batches:
                rows.append(median_row(scenario, name, "mean_batch", batches, **extra))
            value = next(r["value"] for r in rows[::-1] if r["metric"] == throughput_metric
                         and r["variant"] == name)
            log(f"  {scenario} {name:14s} {clients:3d} clients: {value:8.1f} {unit}")
    return rows


def online_embeddings(folder: str, max_batch_size: int, settings: BenchSettings,
                      log: Callable[[str], None]) -> list[dict]:
    """/v1/embeddings, one image per request, at settings.embed_clients."""
    runner = EngineRunner(folder, max_batch_size)
    path = "/v1/embeddings"
    with LoadGenerator() as loadgen, \
            raysight_server(folder, "clip", max_batch_size, settings.max_clients) as serve_url, \
            flask_server(folder, "embed") as flask_url:
        variants = {
            "raysight": _http(loadgen, serve_url, path, "clip", settings),
            "ceiling": _ceiling(runner, max_batch_size),
            "flask": _http(loadgen, flask_url, path, "clip", settings),
            "raysight_mbs1": _http(loadgen, serve_url, path, "clip-mbs1", settings),
        }
        return compare("online_embeddings", variants, settings.embed_clients,
                       settings.embed_window_s, settings, "requests_per_s", "throughput",
                       "img/s", log)


def online_generation(folder: str, settings: BenchSettings,
                      log: Callable[[str], None]) -> list[dict]:
    """/v1/chat/completions, one image and `new_tokens` new tokens, at settings.chat_clients."""
    max_batch_size = settings.chat_max_batch_size
    runner = EngineRunner(folder, max_batch_size, max_tokens=settings.new_tokens)
    path = "/v1/chat/completions"
    with LoadGenerator() as loadgen, \
            raysight_server(folder, "vlm", max_batch_size, settings.max_clients) as serve_url, \
            flask_server(folder, "generate") as flask_url:
        variants = {
            "raysight": _http(loadgen, serve_url, path, "vlm", settings),
            "ceiling": _ceiling(runner, max_batch_size),
            "flask": _http(loadgen, flask_url, path, "vlm", settings),
            "raysight_mbs1": _http(loadgen, serve_url, path, "vlm-mbs1", settings),
        }
        return compare("online_generation", variants, settings.chat_clients,
                       settings.chat_window_s, settings, "tokens_per_s", "tokens_per_s",
                       "tok/s", log)
