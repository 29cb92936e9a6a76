"""Hostile but well-formed requests through the real HTTP app (in-process ModelServers over
the built-in models, no Ray): each is refused alone with a JSON 400 that names what is wrong,
before the expensive work, and the requests around it are answered as usual."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raysight.spec import ModelSpec
from serve_app.config import IndexConfig, ServeConfig
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not HAVE_BUILTIN, reason="the built-in models are not built")

SURROGATE = "\ud800"  # a lone UTF-16 surrogate: valid in JSON text, not encodable as UTF-8
LABELS = ["a red circle", "a blue square", "a green triangle"]


def _client(specs: list[ModelSpec], **fields):
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs(specs, **fields)
    gateway = Gateway(config, {spec.served_name: LocalClient(ModelServer(spec)) for spec in specs})
    return TestClient(build_http_api(gateway))


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    import numpy as np

    from raysight.index import VectorIndex

    # /search's text is refused before any vector is made, so random vectors do here.
    ids = [f"item-{n}" for n in range(4)]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8))
    folder = VectorIndex.build(vectors, ids).save(tmp_path_factory.mktemp("index") / "items")
    specs = [ModelSpec(model="builtin:shapes-vlm"),
             # A longer batch wait than the default, so that a concurrent burst shares batches.
             ModelSpec(model="builtin:shapes-clip", batch_wait_timeout_s=0.05)]
    with _client(specs, indexes=[IndexConfig(path=str(folder), model="shapes-clip")]) as client:
        yield client


@pytest.fixture(scope="module")
def image():
    from raysight.shapes import make_shapes

    picture, label = make_shapes(1, seed=21)[0]
    return base64.b64encode(png_bytes(picture)).decode()


def post(http, path: str, body: dict):
    # json.dumps escapes the surrogate as \ud800, as a hostile client would send it.
    return http.post(path, content=json.dumps(body),
                     headers={"Content-Type": "application/json"})


def message(response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


def chat(image: str, *parts: dict, **options) -> dict:
    return {"model": "shapes-vlm", **options, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}, *parts]}]}


# --- 3. deeply nested JSON ------------------------------------------------------------------------


def test_deeply_nested_bodies_are_refused_and_the_server_goes_on(http, image):
    deep = "[" * 100_000 + "]" * 100_000
    answers = [
        http.post("/v1/chat/completions", content='{"messages": ' + deep + "}"),
        # Deep enough to break pickling for the replica, shallow enough for the parser.
        http.post("/v1/chat/completions", content=json.dumps(chat(image))[:-1]
                  + ', "ignored": ' + "[" * 800 + "]" * 800 + "}"),
        http.post("/classify", content='{"labels": ' + "[" * 65 + "]" * 65 + "}"),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert message(answer) == ("the request body nests JSON arrays and objects more than "
                                   "64 levels deep; the limit is 64")
    assert post(http, "/v1/chat/completions", chat(image)).status_code == 200
    # 64 levels are allowed: the body reaches validation, which explains the real problem.
    shallow = http.post("/classify", content='{"labels": ' + "[" * 63 + "]" * 63 + "}")
    assert shallow.status_code == 400 and "labels" in message(shallow)
    assert "levels deep" not in message(shallow)


# --- 4. extreme but valid sampling ----------------------------------------------------------------


def test_tiny_temperatures_decode_greedily_and_a_tiny_top_p_samples(http, image):
    def answer(**options):
        response = post(http, "/v1/chat/completions", chat(image, **options))
        assert response.status_code == 200, (options, response.text)
        return response.json()["choices"][0]["message"]["content"]

    greedy = answer(temperature=0)
    assert answer(temperature=1e-40) == greedy
    assert answer(temperature=1e-30) == greedy
    assert answer(temperature=1.0, top_p=1e-30) == greedy  # only the top token is left
