"""Admission at the edge: when every model a route could use is full, the request gets a JSON
503 with Retry-After before its body is read; routes of other models, and the health routes,
go on. No Ray: the app runs in-process over the built-in CLIP, with a client whose model says
it is full. The count under a real burst is in tests/integration/test_replica_loss.py."""

from __future__ import annotations

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
