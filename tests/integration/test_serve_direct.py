"""An app of one model over real HTTP on a local Ray: one deployment answers HTTP itself
(serve_app/direct.py), with the same checks as the separate ingress, and a replica lost
with requests in flight gives those requests a JSON 503 (serve_app/proxy_edge.py)."""

from __future__ import annotations

import concurrent.futures as futures
import json
import time

import pytest

from tests.api_server import free_port
from tests.integration.serve_process import image_body

pytestmark = pytest.mark.integration

APP = "direct-test"
PREFIX = "/direct"
# A request in flight at the kill may wait for the replacement replica: ~15 s to start on an
# idle machine, over 60 s measured under load (two busy loops and another test session),
# and a lost request waits for ever. So: well past a loaded start, short of for ever.
LOST_TIMEOUT_S = 150


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


def test_one_model_is_one_deployment_answering_http(served):
    import httpx
    from ray import serve

    [deployment] = serve.status().applications[APP].deployments
    assert deployment == "model-shapes-clip"
    answer = httpx.post(served + "/v1/embeddings", json=image_body(1), timeout=60)
    assert answer.status_code == 200
    [item] = answer.json()["data"]
    assert len(item["embedding"]) > 8 and answer.headers["x-raysight-batch-size"] == "1"
    models = httpx.get(served + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["shapes-clip"]
    refused = httpx.post(served + "/v1/embeddings", json={"model": "shapes-clip",
                                                           "input": ["data:image/png;base64,AAAA"],
                                                           "modality": "image"}, timeout=30)
    assert refused.status_code == 400 and "error" in refused.json()


# Two races once left a request in flight at the kill with no answer until its client's
# timeout: (1) Ray 2.60 never failing the proxy's call to a replica killed just after it
# accepted the request (3 hangs in ~63 kills) - serve_app/proxy_edge.guard_streams ends those
# as 503s; (2) Serve's router re-sending a request from the dying replica to its replacement,
# which then waited for a body the dead replica had already taken from the proxy (1 of 30
# kills) - serve_app/body_replay.py gives the replacement the body again, so such a request
# is answered (a 200). A request the dead replica had accepted is a JSON 503 replica_lost.
@pytest.mark.timeout(480)  # up to LOST_TIMEOUT_S in flight, then up to 120 s to answer again
def test_requests_in_flight_at_a_replica_kill_are_answered_200_or_json_503(served):
    import threading

    import httpx
    import ray

    bodies = [image_body(seed) for seed in range(16)]
    answers: list[tuple[float, float, int | str, str | None, str]] = []
    stop = threading.Event()

    def send(body):
        began = time.monotonic()
        try:
            reply = httpx.post(served + "/v1/embeddings", json=body, timeout=LOST_TIMEOUT_S)
        except httpx.TimeoutException:
            return began, time.monotonic(), "no answer", None, ""
        except httpx.HTTPError as exc:  # e.g. closed without an answer: fails below, listed
            return began, time.monotonic(), type(exc).__name__, None, str(exc)
        return (began, time.monotonic(), reply.status_code, reply.headers.get("content-type"),
                reply.text)

    answered: set[int] = set()  # the clients that have had an answer

    def client(number):  # closed loop until the replica is killed: always one in flight
        while not stop.is_set():
            answers.append(send(bodies[number]))
            answered.add(number)

    [replica] = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                 if APP in actor["name"] and "model-shapes-clip" in actor["name"]]
    with futures.ThreadPoolExecutor(len(bodies)) as pool:
        running = [pool.submit(client, number) for number in range(len(bodies))]
        # Kill once every client's loop runs (each has had an answer, so each has its next
        # request in flight), not after a fixed pause: a busy machine starts 16 threads late.
        try:
            deadline = time.monotonic() + LOST_TIMEOUT_S
            while len(answered) < len(bodies):
                assert time.monotonic() < deadline, f"{len(answered)} of {len(bodies)} answered"
                time.sleep(0.05)
            killed = time.monotonic()
            ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]),
                     no_restart=True)
        finally:
            stop.set()
        for done in running:
            done.result()
    statuses = [status for _, _, status, _, _ in answers]
    # Every client had a request in flight at the kill, and each got an answer.
    spanning = [a for a in answers if a[0] < killed < a[1]]
    assert len(spanning) >= len(bodies) - 2, (len(spanning), statuses)
    assert set(statuses) <= {200, 503}, statuses
    lost = [(kind, text) for _, _, status, kind, text in answers if status == 503]
    assert all(kind == "application/json" for kind, _ in lost), lost
    assert all(json.loads(text)["error"]["code"] in ("replica_lost", "overloaded")
               for _, text in lost), lost
    # Serve starts a new replica; the app answers again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if send(bodies[0])[2] == 200:
            break
        time.sleep(1)
    else:
        pytest.fail("the app did not answer again after its replica was replaced")


def test_the_stream_guard_leaves_slow_live_streams_alone(ray_session):
    """guard_streams (installed in Serve's proxy) looks an actor up when a piece is late; a
    live actor whose pieces come slower than STREAM_CHECK_S streams to its end, and a killed
    one still ends its stream with an error, not a hang."""
    import asyncio

    import ray

    from serve_app.proxy_edge import STREAM_CHECK_S, guard_streams

    guard_streams()
    guard_streams()  # idempotent: one wrapper, not two

    @ray.remote(num_cpus=0)
    class Streamer:
        def pieces(self, count: int, every_s: float):
            for number in range(count):
                time.sleep(every_s)
                yield number

    streamer = Streamer.remote()

    async def consume(generator) -> list:
        return [await ref async for ref in generator]

    assert asyncio.run(consume(streamer.pieces.remote(3, 1.5 * STREAM_CHECK_S))) == [0, 1, 2]

    async def killed_while_streaming():
        generator = streamer.pieces.remote(2, 30.0)
        ray.kill(streamer, no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):
            await asyncio.wait_for(consume(generator), 30)

    asyncio.run(killed_while_streaming())
