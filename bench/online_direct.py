"""Online embeddings by the default path of `raysight serve` of one model on its private Ray:
direct ingress (serve_app/direct_ingress.py), the model's replica answering HTTP itself behind
raysight's relay (serve_app/relay.py, here in this process), no Serve proxy in between, against
the same in-process ceiling and single-process reference as `online_embeddings` (the proxy
path), at the same client counts.

Direct ingress is set when Ray's processes start, so this scenario starts a private Ray of its
own, after the shared one has stopped (bench/runner.py): its figures sit beside the proxy
path's of the same run, not inside one Ray with it.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from bench.bounds import process_groups
from bench.inprocess import EngineRunner
from bench.loadgen import LoadGenerator
from bench.online import _ceiling, _cpu_outside_replica_steady, _http, compare
from bench.paired_latency import paired_latency
from bench.report import median_row, row
from bench.servers import raysight_server, reference_server
from bench.settings import BenchSettings

SCENARIO = "online_embeddings_direct"
APP = "bench-clip"  # the app bench.servers.raysight_server deploys for model "clip"
VARIANT = "raysight_direct"


def online_embeddings_direct(folder: str, max_batch_size: int, settings: BenchSettings,
                             log: Callable[[str], None]) -> list[dict]:
    """/v1/embeddings, one image per request, at settings.embed_clients: raysight with direct
    ingress, the in-process ceiling and the single-process batching reference."""
    from raysight.local_ray import start_local_ray
    from serve_app import direct_ingress
    from serve_app.launch import relay_for
    from serve_app.proxy_edge import install

    install()  # as `raysight serve` does before it starts its local Ray
    replica_port = direct_ingress.free_port()
    local = start_local_ray(process_env=direct_ingress.process_env(replica_port),
                            log_to_driver=False,
                            include_dashboard=False, configure_logging=False)
    try:
        runner = EngineRunner(folder, max_batch_size)
        path = "/v1/embeddings"
        with LoadGenerator() as loadgen, \
                reference_server(folder, max_batch_size) as reference, \
                raysight_server(folder, "clip", max_batch_size, settings.max_clients,
                                with_mbs1=False, direct=True) as serve_url:
            reference_url = reference.ready()
            results: list[dict] = []
            raysight = _http(loadgen, serve_url, path, "clip", settings, results)
            split_at = 32 if 32 in settings.embed_clients else max(settings.embed_clients)
            steady: list[dict] = []

            timing: list[dict] = []

            def raysight_then_forward(clients: int, seconds: float) -> list[dict]:
                figures = raysight_with_cpu(clients, seconds)
                timing.extend(_where_the_cycle_goes(results[-1], runner, max_batch_size,
                                                    seconds, log))
                return figures

            def raysight_with_cpu(clients: int, seconds: float) -> list[dict]:
                if clients != split_at:
                    return raysight(clients, seconds)
                groups = process_groups()
                relay = relay_for(APP)
                relay_before, began = relay.cpu_seconds(), time.perf_counter()
                figures = raysight(clients, seconds, tuple(groups))
                relay_cores = (relay.cpu_seconds() - relay_before) / (time.perf_counter() - began)
                outside = _cpu_outside_replica_steady(results[-1], groups, figures, clients,
                                                      SCENARIO, VARIANT)
                # The relay runs in this process (as in `raysight serve`'s): its thread's CPU
                # over the whole measurement (warm-up included) joins Ray's and Serve's.
                relay_ms = 1000 * relay_cores / outside["requests_per_s"]
                steady.append({**outside, "value": round(outside["value"] + relay_ms, 2),
                               "relay_ms": round(relay_ms, 3)})
                log(f"  CPU per request outside the model replica: {steady[-1]['value']:.1f} "
                    f"ms in steady state, {relay_ms:.2f} of it in raysight's relay")
                return figures

            variants = {
                VARIANT: raysight_then_forward,
                "ceiling": _ceiling(runner, max_batch_size, settings.repeats),
                "reference": _http(loadgen, reference_url, path, "clip", settings),
            }
            rows = compare(SCENARIO, variants, settings.embed_clients, settings.embed_window_s,
                           "requests_per_s", "throughput", "img/s", log)
            latency = paired_latency(serve_url, path, "clip", runner, settings.latency_pairs,
                                     SCENARIO, VARIANT, log)
        return rows + steady + timing + latency
    finally:
        from ray import serve

        serve.shutdown()
        local.stop()


def _where_the_cycle_goes(result: dict, runner: EngineRunner, max_batch_size: int,
                          seconds: float, log: Callable[[str], None]) -> list[dict]:
    """Right after raysight's measurement at a client count: the replica's own timing of its
    answers (Server-Timing: the median answer's batch run on the model, and its wait for that
    batch) beside the same batch's forward alone in this process (prepared inputs, no HTTP),
    so a shortfall against the ceiling splits into a slower forward in the replica and time
    outside the model."""
    clients = result["clients"]
    model = [w["model_ms"] for w in result["windows"] if w.get("model_ms") is not None]
    queue = [w["queue_ms"] for w in result["windows"] if w.get("queue_ms") is not None]
    if not model:
        return []
    batch = min(clients, max_batch_size)
    alone = runner.measure(batch, seconds, forward_only=True)
    log(f"  {clients:3d} clients: the replica ran a batch in {statistics.median(model):.0f} ms "
        f"(p50; waiting {statistics.median(queue):.0f} ms for it), the same batch of {batch} "
        f"alone in this process {alone.batch_p50_ms:.0f} ms")
    return [median_row(SCENARIO, VARIANT, "replica_batch_ms", model, unit="ms", clients=clients),
            median_row(SCENARIO, VARIANT, "replica_queue_ms", queue, unit="ms", clients=clients),
            row(SCENARIO, "ceiling", "forward_only_ms", round(alone.batch_p50_ms, 1), unit="ms",
                clients=clients, batch=batch)]
