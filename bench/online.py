"""Online scenarios: raysight over HTTP against the model's ceiling (the engine in this
process, batched, no HTTP), the single-process batching reference (embeddings; bench/
reference_server.py), the Flask baseline, and raysight with max_batch_size=1.

At each client count the variants run one after another, within a minute or two, so load
from anything else on the machine falls on all of them much alike. Each HTTP variant's
repeats are consecutive windows of one steady-state closed loop (bench/loadgen.py): a
warm-up and a final wait per repeat would cost minutes at 32 clients of a slow server.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from bench.bounds import SERVE_OVERHEAD_GROUPS, cpu_split, generation_split, process_groups
from bench.inprocess import EngineRunner, Measured
from bench.loadgen import Load, LoadGenerator
from bench.paired_latency import paired_latency
from bench.report import median_row, row
from bench.servers import MBS1_PREFIX, flask_server, raysight_server, reference_server
from bench.settings import BenchSettings

Measure = Callable[[int, float], dict]  # (clients, seconds) -> figures


def _http(loadgen: LoadGenerator, url: str, path: str, model: str,
          settings: BenchSettings, results: list[dict] | None = None) -> Measure:
    """A closed-loop HTTP measure; each run's whole result (bench/loadgen.py) is appended to
    `results`. `cpu_pids`: processes whose steady-state CPU the load generator reads."""
    def measure(clients: int, seconds: float, cpu_pids: tuple[int, ...] = ()) -> list[dict]:
        load = Load(url=url, path=path, model=model, clients=clients, seconds=seconds,
                    windows=settings.repeats, max_tokens=settings.new_tokens,
                    max_requests=40 * clients + int(settings.repeats * seconds * 500),
                    cpu_pids=tuple(cpu_pids))
        result = loadgen.run(load)
        if set(result["statuses"]) != {"200"}:
            raise RuntimeError(f"{url}{path} ({model}) answered {result['statuses']}")
        if results is not None:
            results.append(result)
        return result["windows"]

    return measure


def _ceiling(runner: EngineRunner, max_batch_size: int, repeats: int,
             runs: dict[int, list[Measured]] | None = None) -> Measure:
    """The in-process ceiling; each batch size's runs are also kept in `runs`."""
    def measure(clients: int, seconds: float) -> list[dict]:
        batch = min(clients, max_batch_size)
        figures = []
        for _ in range(repeats):
            done = runner.measure(batch, seconds)
            if runs is not None:
                runs.setdefault(batch, []).append(done)
            figures.append({"requests_per_s": done.items_per_s,
                            "tokens_per_s": done.tokens_per_s, "p50_ms": done.batch_p50_ms,
                            "p99_ms": done.batch_p99_ms, "mean_batch": float(batch)})
        return figures

    return measure


def compare(scenario: str, variants: dict[str, Measure], clients_list: tuple[int, ...],
            window_s: float, throughput_key: str, throughput_metric: str, unit: str,
            log: Callable[[str], None]) -> list[dict]:
    """Measure every variant at every client count, one after another (in alternating
    order from one client count to the next), each giving one figure per repeat."""
    rows: list[dict] = []
    names = list(variants)
    for step, clients in enumerate(clients_list):
        for name in names if step % 2 == 0 else names[::-1]:
            got = variants[name](clients, window_s)
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
            log(f"  {scenario} {name:14s} {clients:3d} clients: " + ", ".join(
                f"{g[throughput_key]:.1f}" for g in got) + f" {unit}")
    return rows


def online_embeddings(folder: str, max_batch_size: int, settings: BenchSettings,
                      log: Callable[[str], None]) -> list[dict]:
    """/v1/embeddings, one image per request, at settings.embed_clients: raysight, the
    in-process ceiling, the single-process batching reference, Flask, and raysight at
    max_batch_size 1."""
    runner = EngineRunner(folder, max_batch_size)
    path = "/v1/embeddings"
    with LoadGenerator() as loadgen, flask_server(folder, "embed") as flask, \
            reference_server(folder, max_batch_size) as reference, \
            raysight_server(folder, "clip", max_batch_size, settings.max_clients) as serve_url:
        flask_url = flask.ready()  # it loaded its model while Serve started
        reference_url = reference.ready()
        results: list[dict] = []
        raysight = _http(loadgen, serve_url, path, "clip", settings, results)
        # At the target's 32 clients, also see where the cores go while raysight serves,
        # and what each request costs outside the model's replica.
        split_at = 32 if 32 in settings.embed_clients else max(settings.embed_clients)
        split: list[dict] = []

        def raysight_with_split(clients: int, seconds: float) -> list[dict]:
            if clients != split_at:
                return raysight(clients, seconds)
            # First, what the same processes burn with no request at all (Serve's control
            # loop, metrics, Ray's heartbeats): per request it shrinks as throughput grows.
            idle, _ = cpu_split(lambda: time.sleep(2 * settings.embed_window_s))
            groups = process_groups()
            began = time.perf_counter()
            rows, figures = cpu_split(lambda: raysight(clients, seconds, tuple(groups)),
                                      clients=clients)
            result = results[-1]
            steady = _cpu_outside_replica_steady(result, groups, figures, clients)
            whole = _cpu_outside_replica(rows, time.perf_counter() - began,
                                         result["statuses"]["200"], clients)
            idle_cores = round(_overhead_cores(idle), 4)
            split.extend(rows)
            split.extend([steady, whole])
            split.append(row("online_embeddings", "raysight", "idle_cores_outside_replica",
                             idle_cores, clients=clients))
            log("  cores while raysight serves: " + ", ".join(
                f"{r['variant']} {r['value']:.2f}" for r in rows))
            log(f"  CPU per request outside the model replica: {steady['value']:.1f} ms in "
                f"steady state ({whole['value']:.1f} ms over the whole measurement; those "
                f"processes burn {idle_cores:.2f} cores with no request at all)")
            return figures

        variants = {
            "raysight": raysight_with_split,
            "ceiling": _ceiling(runner, max_batch_size, settings.repeats),
            "reference": _http(loadgen, reference_url, path, "clip", settings),
            "flask": _http(loadgen, flask_url, path, "clip", settings),
            "raysight_mbs1": _http(loadgen, serve_url + MBS1_PREFIX, path, "clip-mbs1",
                                   settings),
        }
        rows = compare("online_embeddings", variants, settings.embed_clients,
                       settings.embed_window_s, "requests_per_s", "throughput", "img/s", log)
        latency = paired_latency(serve_url, path, "clip", runner, settings.latency_pairs,
                                 "online_embeddings", "raysight", log)
        return rows + split + latency


def _cpu_outside_replica_steady(result: dict, groups: dict[int, str], windows: list[dict],
                                clients: int, scenario: str = "online_embeddings",
                                variant: str = "raysight") -> dict:
    """CPU-ms per request of this run's Serve and Ray processes other than the model's
    replica (proxy, ingress if any, controller, GCS, raylet, dashboard agent, Ray's other
    helpers) in steady state: the cores they used while the windows were measured (read by
    the load generator as the windows opened and closed) over the requests/s the windows
    measured (their median, the throughput figure itself)."""
    seconds = result["measured_s"]
    cores = sum(used for pid, used in result["steady_cpu"].items()
                if groups.get(int(pid)) in SERVE_OVERHEAD_GROUPS) / seconds
    per_s = statistics.median(w["requests_per_s"] for w in windows)
    return row(scenario, variant, "cpu_ms_outside_replica",
               round(1000 * cores / per_s, 2), unit="ms", clients=clients,
               cores=round(cores, 4), requests_per_s=round(per_s, 2),
               seconds=round(seconds, 2))


def _cpu_outside_replica(split: list[dict], wall_s: float, requests: int,
                         clients: int) -> dict:
    """The same processes' CPU-ms per answered request over the whole measurement: the
    cores they used over `wall_s` (warm-up, windows, the hang-up's cancelled requests and
    the settling request, which the answers do not count) while `requests` were answered."""
    cores = _overhead_cores(split)
    return row("online_embeddings", "raysight", "cpu_ms_outside_replica_whole_run",
               round(1000 * cores * wall_s / max(requests, 1), 2), unit="ms",
               clients=clients, requests=requests)


def _overhead_cores(split: list[dict]) -> float:
    return sum(r["value"] for r in split if r["variant"] in SERVE_OVERHEAD_GROUPS)


def online_generation(folder: str, settings: BenchSettings,
                      log: Callable[[str], None]) -> list[dict]:
    """/v1/chat/completions, one image and `new_tokens` new tokens, at settings.chat_clients."""
    max_batch_size = settings.chat_max_batch_size
    runner = EngineRunner(folder, max_batch_size, max_tokens=settings.new_tokens)
    path = "/v1/chat/completions"
    with LoadGenerator() as loadgen, flask_server(folder, "generate") as flask, \
            raysight_server(folder, "vlm", max_batch_size, settings.max_clients,
                            settings.chat_batch_wait_s) as serve_url:
        flask_url = flask.ready()
        ceiling_runs: dict[int, list[Measured]] = {}
        variants = {
            "raysight": _http(loadgen, serve_url, path, "vlm", settings),
            "ceiling": _ceiling(runner, max_batch_size, settings.repeats, ceiling_runs),
            "flask": _http(loadgen, flask_url, path, "vlm", settings),
            "raysight_mbs1": _http(loadgen, serve_url + MBS1_PREFIX, path, "vlm-mbs1",
                                   settings),
        }
        rows = compare("online_generation", variants, settings.chat_clients,
                       settings.chat_window_s, "tokens_per_s", "tokens_per_s", "tok/s", log)
    # Where a batched generate's time goes, at 1 and at the most clients: the ceiling's
    # runs against the same chats with 1 new token (no servers running now).
    largest = min(max(settings.chat_clients), max_batch_size)
    split = generation_split({b: ceiling_runs[b] for b in (1, largest) if b in ceiling_runs},
                             runner.with_max_tokens(1), settings.repeats,
                             settings.chat_window_s / 2)
    log("  generate split: " + ", ".join(
        f"{r['variant']} {r['metric']} {r['value']:.3g}" for r in split))
    return rows + split
