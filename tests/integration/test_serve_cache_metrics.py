"""The caches' counters reach Ray's Prometheus export from a served model, and a repeated
greedy request comes back from the response cache with the same answer."""

from __future__ import annotations

import base64
import time

import pytest

from tests.api_server import free_port
from tests.conftest import noise_image, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(ray_session, tiny_models):
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig, ServedModel
    from serve_app.launch import start_serving

    spec = ModelSpec(model=tiny_models["qwen2-vl"], name="cached-qwen", response_cache=True)
    config = ServeConfig(
        models=[ServedModel(spec=spec, deployment={"num_cpus": 0.5})],
        port=free_port(),
        app_name="raysight-cache-test",
    )
    url = start_serving(config)
    yield url
    serve.delete(config.app_name)
    serve.shutdown()


def cache_samples(port: int) -> dict[tuple[str, str], float]:
    """(metric, cache) -> value of the cached-qwen model's cache metrics."""
    import requests

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_raysight_cache_") or 'model="cached-qwen"' not in line:
            continue
        name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
        cache = line.split('cache="')[1].split('"')[0]
        samples[(name, cache)] = samples.get((name, cache), 0.0) + value
    return samples


def test_cache_counters_reach_prometheus(server, rng):
    import ray
    import requests

    image = base64.b64encode(png_bytes(noise_image(rng, 40, 40))).decode("ascii")

    def predict(prompt: str) -> str:
        response = requests.post(server + "/predict", timeout=60,
                                 json={"prompt": prompt, "image": image, "max_tokens": 5})
        assert response.status_code == 200, response.text
        return response.json()["output"]

    first = predict("Describe the image.")
    predict("What color is the shape?")  # the same image: the vision cache answers
    assert predict("Describe the image.") == first  # the same request: the response cache

    port = ray._private.worker.global_worker.node.metrics_export_port

    def complete(samples) -> bool:
        return (samples.get(("ray_raysight_cache_hits_total", "vision"), 0) >= 1
                and samples.get(("ray_raysight_cache_misses_total", "vision"), 0) >= 1
                and samples.get(("ray_raysight_cache_hits_total", "response"), 0) >= 1
                and samples.get(("ray_raysight_cache_hits_total", "preprocess"), 0) >= 2
                and samples.get(("ray_raysight_cache_bytes", "vision"), 0) > 0)

    deadline = time.monotonic() + 60  # the export runs every ~10 s: poll
    while not complete(samples := cache_samples(port)) and time.monotonic() < deadline:
        time.sleep(1)
    assert complete(samples), samples
