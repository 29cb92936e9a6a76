"""An app of one model over real HTTP on a local Ray: one deployment answers HTTP itself
(serve_app/direct.py), with the same checks as the separate ingress, and a replica lost
with requests in flight gives those requests a JSON 503 (serve_app/proxy_edge.py)."""

from __future__ import annotations

import base64
import concurrent.futures as futures
import time

import pytest

from tests.api_server import free_port
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration

APP = "direct-test"
PREFIX = "/direct"
# Well past a new replica's start (~15 s here), well short of a lost request's wait.
LOST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def served(ray_session):
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig
    from serve_app.launch import start_serving

    config = ServeConfig.for_specs([ModelSpec(model="builtin:shapes-clip", max_batch_size=4)],
                                   port=free_port(), app_name=APP, route_prefix=PREFIX,
                                   ingress={"separate": False})
    url = start_serving(config)
    yield url
    serve.delete(APP)


def _image_body(seed: int) -> dict:
    from raysight.shapes import make_shapes

    [(image, _)] = make_shapes(1, seed=seed)
    url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    return {"model": "shapes-clip", "input": [url], "modality": "image"}


def test_one_model_is_one_deployment_answering_http(served):
    import httpx
    from ray import serve

    [deployment] = serve.status().applications[APP].deployments
    assert deployment == "model-shapes-clip"
    answer = httpx.post(served + "/v1/embeddings", json=_image_body(1), timeout=60)
    assert answer.status_code == 200
    [item] = answer.json()["data"]
    assert len(item["embedding"]) > 8 and answer.headers["x-raysight-batch-size"] == "1"
    models = httpx.get(served + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["shapes-clip"]
    refused = httpx.post(served + "/v1/embeddings", json={"model": "shapes-clip",
                                                           "input": ["data:image/png;base64,AAAA"],
                                                           "modality": "image"}, timeout=30)
    assert refused.status_code == 400 and "error" in refused.json()


# Every request in flight when the replica is killed is answered: a JSON 503 replica_lost if
# the replica held it, a 200 from the new replica if Serve's router still held it. Before
# serve_app/proxy_edge.guard_streams, about one kill in 12-20 left a request the replica had
# just accepted with no answer until its client's timeout (Ray's owner of the proxy's call
# never learnt that the actor died); the guard answers it within ~2 s of the kill.
def test_requests_lost_with_their_replica_are_json_503s(served):
    import threading

    import httpx
    import ray

    bodies = [_image_body(seed) for seed in range(16)]
    answers: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def send(body):
        began = time.monotonic()
        try:
            reply = httpx.post(served + "/v1/embeddings", json=body, timeout=LOST_TIMEOUT_S)
        except httpx.TimeoutException:
            return "no answer", None, f"none within {time.monotonic() - began:.0f} s"
        return reply.status_code, reply.headers.get("content-type"), reply.text

    def client(body):  # closed loop until the replica is killed: always one in flight
        while not stop.is_set():
            answers.append(send(body))

    [replica] = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                 if APP in actor["name"] and "model-shapes-clip" in actor["name"]]
    with futures.ThreadPoolExecutor(len(bodies)) as pool:
        running = [pool.submit(client, body) for body in bodies]
        time.sleep(1.0)
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        stop.set()
        for done in running:
            done.result()
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    lost = [(kind, text) for status, kind, text in answers if status == 503]
    assert any("replica_lost" in text for _, text in lost), statuses
    assert all(kind == "application/json" for kind, _ in lost)
    # Serve starts a new replica; the app answers again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if send(bodies[0])[0] == 200:
            break
        time.sleep(1)
    else:
        pytest.fail("the app did not answer again after its replica was replaced")
