"""Admission at the edge: when every model a route could use is full, the request gets a JSON
503 with Retry-After before its body is read; routes of other models, and the health routes,
go on. No Ray: the app runs in-process over the built-in CLIP, with a client whose model says
it is full. The count under a real burst is in tests/integration/test_replica_loss.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysight.spec import ModelSpec
from serve_app.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (ROOT / "raysight/builtin/models/shapes-clip/model.safetensors").is_file(),
    reason="the built-in models are not built")


@pytest.fixture(scope="module")
def app():
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient, ModelOverloaded
    from serve_app.routes import build_http_api

    class FullWhenTold(LocalClient):
        full = False
        capacity = 40  # what HandleClient counts against (every replica and the queue)
        retry_after_s = 2

        def refusal(self):
            return ModelOverloaded("model 'shapes-clip' is at capacity (40 requests in "
                                   "progress or queued); retry after 2s", 2) if self.full else None

    spec = ModelSpec(model="builtin:shapes-clip")
    client = FullWhenTold(ModelServer(spec))
    gateway = Gateway(ServeConfig.for_specs([spec]), {spec.served_name: client})
    with TestClient(build_http_api(gateway)) as http:
        yield http, client


def test_a_full_model_is_refused_before_the_body_is_read(app):
    http, client = app
    # Until the gateway has asked the model its task, nothing is refused.
    assert http.post("/search", content=b"{not json").status_code == 400
    assert http.get("/v1/models").json()["data"][0]["task"] == "embed"
    client.full = True
    try:
        for path in ("/v1/embeddings", "/classify", "/search"):
            # Not JSON at all: a 400 if the body were read; the 503 comes first.
            refused = http.post(path, content=b"{not json")
            assert refused.status_code == 503, (path, refused.text)
            assert refused.headers["Retry-After"] == "2"
            assert refused.json()["error"]["code"] == "overloaded"
            assert "at capacity (40 requests" in refused.json()["error"]["message"]
        # No generate model is full (there is none): chat is not refused at the edge.
        chat = http.post("/v1/chat/completions", json={"messages": []})
        assert chat.status_code == 400
        assert http.get("/healthz").status_code == 200
    finally:
        client.full = False
    assert http.post("/classify", json={"image": "", "labels": ["a"]}).status_code == 400


def test_answers_on_model_routes_tell_the_proxy_their_pool_and_its_refusal(app):
    from serve_app.proxy_edge import ADMISSION_HEADER

    http, client = app
    header = ADMISSION_HEADER.decode()
    http.get("/v1/models")  # the gateway learns the model's task
    answer = http.post("/classify", json={"image": "", "labels": ["a"]})
    assert answer.status_code == 400  # any answer on a model route carries it
    told = json.loads(answer.headers[header])
    assert (told["pool"], told["limit"], told["retry_after"]) == ("raysight/embed", 40, 2)
    # The proxy's 503 is the ingress's own: same shape, same message, same Retry-After.
    client.full = True
    try:
        refused = http.post("/classify", content=b"{}")
    finally:
        client.full = False
    assert told["refusal"]["error"]["code"] == refused.json()["error"]["code"] == "overloaded"
    assert "is at capacity (40 requests in progress or queued); retry after 2s" in \
        told["refusal"]["error"]["message"]
    # /predict keeps its flat error shape in the proxy's 503 too.
    from serve_app.gateway import AdmissionPool
    from serve_app.metrics import IngressMetrics
    from serve_app.routes import HttpEdge

    edge = HttpEdge(None, None, 1, IngressMetrics(),
                    pool=lambda path: AdmissionPool("raysight/generate", 3, 1, ("vlm",)))
    assert json.loads(edge._pool_header("/predict"))["refusal"] == {
        "error": "model 'vlm' is at capacity (3 requests in progress or queued); retry after 1s"}
    # No pool for routes without a model, nor for a chat when no generate model is served.
    assert header not in http.get("/healthz").headers
    assert header not in http.post("/v1/chat/completions", json={"messages": []}).headers


def test_admission_capacity_counts_every_replica_and_the_queue():
    from serve_app.app import admission_capacity

    def config(**deployment) -> ServeConfig:
        return ServeConfig.from_mapping({
            "models": [{"model": "builtin:shapes-clip", "max_batch_size": 8,
                        "deployment": deployment}]})

    assert admission_capacity(config(), "shapes-clip") == 32 + 64
    assert admission_capacity(config(num_replicas=2, max_ongoing_requests=8,
                                     max_queued_requests=14), "shapes-clip") == 30
    scaled = config(autoscaling_config={"min_replicas": 1, "max_replicas": 3},
                    max_ongoing_requests=10, max_queued_requests=5)
    assert admission_capacity(scaled, "shapes-clip") == 35
