"""Measure online batching: throughput and batch sizes under concurrent clients.

    python -m serve_app.benchmark [--clients 32] [--seconds 20] [--model DIR]

Serves one embed model (default: a randomly initialised CLIP shaped like ViT-B/32, built
offline) on a private local Ray three ways - the DrainBatcher at max_batch_size 16, the same
at max_batch_size 1, and Ray's ``@serve.batch`` at 16 - and drives each with image
embedding requests from a client in a separate process (a client inside the Ray driver
process would slow the server it measures). Also measures the in-process ceiling: the
engine alone on full batches.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

from raysight.errors import RaysightError
from serve_app.deployment import ModelServer, Served

VIT_B32_LIKE = dict(hidden=512, layers=12, heads=8, vision_hidden=768, vision_layers=12,
                    image_size=224, patch=32, vocab=2000, init_std=0.02)


class ServeBatchModelServer(ModelServer):
    """For comparison only: Ray's ``@serve.batch`` (max_concurrent_batches=1) in place of
    the DrainBatcher, the model still running off the event loop."""

    def __init__(self, spec, torch_threads=None, engine=None):
        from ray import serve

        super().__init__(spec, torch_threads, engine)
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


def _images(count: int, size: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype="uint8")).save(buffer, "PNG")
        encoded.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return encoded


async def _drive(url: str, clients: int, seconds: float, image_size: int) -> dict:
    """Closed loop: each client sends its next request when the previous one is answered."""
    import httpx

    images = _images(64, image_size)
    latencies: list[float] = []
    batch_sizes: Counter = Counter()
    statuses: Counter = Counter()
    deadline = time.perf_counter() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        sent = number
        while time.perf_counter() < deadline:
            body = {"model": "clip", "input": [images[sent % len(images)]], "modality": "image"}
            started = time.perf_counter()
            response = await http.post(url + "/v1/embeddings", json=body)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1
            batch_sizes[int(response.headers.get("x-raysight-batch-size", 0))] += 1
            sent += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    served = statuses.get(200, 0)
    return {
        "requests_per_s": served / elapsed,
        "ok": served, "statuses": dict(statuses),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
        "batch_sizes": dict(sorted(batch_sizes.items())),
        "mean_batch": sum(k * v for k, v in batch_sizes.items()) / max(1, sum(batch_sizes.values())),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ceiling(model: str, batch: int, image_size: int, seconds: float) -> float:
    """Images per second of the engine alone, on full batches, in this process."""
    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.spec import ModelSpec
    from serve_app.deployment import use_cores

    use_cores(None)
    engine = build_engine(ModelSpec(model=model, max_batch_size=batch))
    requests = [EmbedRequest(image=image) for image in _images(batch, image_size)]
    engine.run(requests)  # warm up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine.run(requests)
        done += batch
    return done / (time.perf_counter() - started)


def _measure(model: str, variant: str, batch: int, args) -> dict:
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig, ServedModel
    from serve_app.launch import start_serving

    config = ServeConfig(
        models=[ServedModel(spec=ModelSpec(model=model, name="clip", max_batch_size=batch),
                            deployment={"max_queued_requests": 4 * args.clients})],
        port=_free_port(), app_name=f"bench-{variant}-{batch}",
    )
    server = ServeBatchModelServer if variant == "serve.batch" else ModelServer
    url = start_serving(config, model_server=server)
    try:
        def client(seconds: float) -> dict:
            command = [sys.executable, "-m", "serve_app.benchmark", "--client", url,
                       "--clients", str(args.clients), "--seconds", str(seconds),
                       "--image-size", str(args.image_size)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        client(3)  # warm up
        return client(args.seconds)
    finally:
        serve.delete(config.app_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.benchmark", description=__doc__)
    parser.add_argument("--model", help="model folder (default: a random ViT-B/32-like CLIP)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--only", choices=["drain", "drain1", "serve.batch"], action="append",
                        help="run only these variants (default: all three)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants this many times, alternating their order")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run the load generator
    args = parser.parse_args(argv)
    variants = {"drain": ("drain", 16), "drain1": ("drain", 1), "serve.batch": ("serve.batch", 16)}
    chosen = [variants[name] for name in (args.only or variants)]
    # ABC CBA ...: a load that drifts during the run (other jobs on the machine) hits all alike.
    args.variants = [v for r in range(args.rounds) for v in (chosen if r % 2 == 0 else chosen[::-1])]
    if args.client:
        print(json.dumps(asyncio.run(_drive(args.client, args.clients, args.seconds, args.image_size))))
        return 0

    # The replicas run with OMP_WAIT_POLICY=PASSIVE (DeploymentOptions.env_vars); measure the
    # engine alone the same way. It must be set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="bench-clip-") as scratch:
        model = args.model
        if model is None:
            from tests.fixtures.random_models import RandomModelSize, build_random_model

            model = str(build_random_model("clip", scratch, RandomModelSize(**VIT_B32_LIKE)))
        _run_all(model, args)
    return 0


def _run_all(model: str, args) -> None:
    import ray

    ceiling = _ceiling(model, 16, args.image_size, min(args.seconds, 10))
    print(f"in-process ceiling (engine alone, batches of 16): {ceiling:.1f} img/s", flush=True)
    ray.init(address="local", log_to_driver=False, include_dashboard=False)
    try:
        for variant, batch in args.variants:
            result = _measure(model, variant, batch, args)
            print(f"{variant:12s} max_batch_size={batch:2d}: {result['requests_per_s']:5.1f} req/s, "
                  f"p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
                  f"mean batch {result['mean_batch']:.1f}, batch sizes {result['batch_sizes']}, "
                  f"statuses {result['statuses']}", flush=True)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
