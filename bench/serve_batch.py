"""Scenario serve_batch: raysight's drain-when-free batcher against Ray's ``@serve.batch``
and against no batching (max_batch_size=1), on the bench's ViT-B/32-shaped CLIP.

    python -m bench --only serve_batch

One Serve application holds three deployments of the same model behind raysight's real
ingress: `clip` (the DrainBatcher at max_batch_size 16), `clip-mbs1` (max_batch_size 1) and
`clip-serve-batch` (``@serve.batch`` at max_batch_size 16, max_concurrent_batches=1, the model
still run off the event loop). Closed-loop clients in their own process (bench/loadgen.py)
send one image per /v1/embeddings request; the variants take turns, so load from anything
else on the machine falls on all three alike. The `X-Raysight-Batch-Size` header gives the
mean batch each variant formed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from raysight.errors import RaysightError
from serve_app.deployment import ModelServer, Served

from bench.loadgen import Load, LoadGenerator
from bench.settings import BenchSettings

MAX_BATCH_SIZE = 16
SERVE_BATCH = "clip-serve-batch"


class ServeBatchModelServer(ModelServer):
    """For comparison only: Ray's ``@serve.batch`` in place of the DrainBatcher."""

    def __init__(self, spec, torch_threads=None):
        from ray import serve

        super().__init__(spec, torch_threads)
        self._batched = serve.batch(max_batch_size=spec.max_batch_size,
                                    batch_wait_timeout_s=spec.batch_wait_timeout_s)(self._run)

    async def _run(self, items: list) -> list:
        results = await asyncio.to_thread(self.engine.infer_and_postprocess, items)
        return [(result, len(items)) for result in results]

    async def _serve(self, request) -> Served:
        prepared = await self._prepare(request)
        if isinstance(prepared, RaysightError):
            return Served(prepared)
        result, size = await self._batched(prepared)
        return Served(result, size)


def _app(config):
    """What `build_app` builds (same ingress, same deployment options), except that
    SERVE_BATCH runs the class above in place of ModelServer."""
    from serve_app.app import ingress_deployment, model_deployment

    handles: dict[str, Any] = {}
    for served in config.models:
        deployment = model_deployment(served)
        if served.name == SERVE_BATCH:
            deployment = deployment.options(func_or_class=ServeBatchModelServer)
        handles[served.name] = deployment.bind(served.spec, served.deployment.torch_threads)
    return ingress_deployment(config).bind(config, handles)


def _serve(folder: str, clients: int) -> tuple[str, str]:
    """Deploy the three variants on the Ray this process runs; (base URL, app name)."""
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig, ServedModel

    from bench.servers import free_port

    # Three replicas on a machine that may have 2 CPUs: each reserves half a CPU (the
    # reservation only places them; torch in each still uses every core).
    deployment = {"max_queued_requests": 4 * clients,
                  "max_ongoing_requests": max(clients, 2 * MAX_BATCH_SIZE), "num_cpus": 0.5}
    models = [ServedModel(spec=ModelSpec(model=folder, name=name, max_batch_size=batch),
                          deployment=deployment)
              for name, batch in (("clip", MAX_BATCH_SIZE), ("clip-mbs1", 1),
                                  (SERVE_BATCH, MAX_BATCH_SIZE))]
    config = ServeConfig(models=models, port=free_port(), app_name="bench-serve-batch")
    from serve_app.app import LOGGING_CONFIG

    serve.start(http_options={"host": config.host, "port": config.port},
                logging_config=LOGGING_CONFIG)
    serve.run(_app(config), name=config.app_name, route_prefix="/",
              logging_config=LOGGING_CONFIG)
    return f"http://127.0.0.1:{config.port}", config.app_name


def serve_batch(folder: str, settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    """Rows of the comparison at settings.serve_batch_clients."""
    from ray import serve

    from bench.online import compare

    clients = settings.serve_batch_clients
    url, app_name = _serve(folder, clients)
    try:
        with LoadGenerator() as loadgen:
            def variant(model: str):
                def measure(clients: int, seconds: float) -> list[dict]:
                    load = Load(url=url, path="/v1/embeddings", model=model, clients=clients,
                                seconds=seconds, windows=settings.repeats,
                                max_requests=40 * clients + int(settings.repeats * seconds * 500))
                    result = loadgen.run(load)
                    if "error" in result or set(result["statuses"]) != {"200"}:
                        raise RuntimeError(f"{model} answered {result}")
                    return result["windows"]
                return measure

            variants = {"drain": variant("clip"), "serve.batch": variant(SERVE_BATCH),
                        "drain_mbs1": variant("clip-mbs1")}
            return compare("serve_batch", variants, (clients,), settings.serve_batch_window_s,
                           "requests_per_s", "throughput", "img/s", log)
    finally:
        serve.delete(app_name)
