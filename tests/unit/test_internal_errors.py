"""Only raysight's own typed errors reach a client with their message: an engine that raises
anything else answers a 500 naming an error id, and the traceback is logged under that id."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path

import pytest

from raysight.engines.embed import EmbedEngine, EmbedRequest, Embedding
from raysight.engines.generate import GenerateEngine
from raysight.errors import InternalError
from raysight.spec import ModelSpec
from serve_app.config import ServeConfig
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not HAVE_BUILTIN, reason="the built-in models are not built")

SECRET = "TextEncodeInput must be Union[secret-detail]"
ERROR_ID = re.compile(r"^internal error; error id ([0-9a-f]{12}) \(the server log has the details\)$")


class PreprocessBreaksOnBoom(GenerateEngine):
    """The built-in VLM, except that a prompt saying "boom" breaks inside preprocess."""

    def preprocess(self, request):
        if "boom" in str(request.messages):
            raise TypeError(SECRET)
        return super().preprocess(request)


class InferBreaksOnBoom(EmbedEngine):
    """The built-in CLIP, except that any batch holding the text "boom" breaks in infer."""

    def preprocess(self, request):
        prepared = super().preprocess(request)
        prepared.boom = request.text == "boom"
        return prepared

    def infer(self, batch):
        if any(getattr(item, "boom", False) for item in batch):
            raise RuntimeError(SECRET)
        return super().infer(batch)


def _load(engine_class, model: str):
    from raysight.loading import load_model

    return engine_class(load_model(ModelSpec(model=model)))


def _logged_id(caplog, error_id: str) -> None:
    """The log holds the traceback, with the secret, under the id the client was given."""
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])
    assert f"error id {error_id}" in caplog.text and "Traceback" in caplog.text


@pytest.fixture(scope="module")
def http():
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    vlm = _load(PreprocessBreaksOnBoom, "builtin:shapes-vlm")
    clip = _load(InferBreaksOnBoom, "builtin:shapes-clip")
    servers = {engine.spec.served_name: ModelServer(engine.spec, engine=engine)
               for engine in (vlm, clip)}
    config = ServeConfig.for_specs([server.spec for server in servers.values()])
    gateway = Gateway(config, {name: LocalClient(server) for name, server in servers.items()})
    with TestClient(build_http_api(gateway)) as client:
        yield client, servers


@pytest.fixture(scope="module")
def image():
    from raysight.shapes import make_shapes

    return base64.b64encode(png_bytes(make_shapes(1, seed=5)[0][0])).decode()


def test_a_preprocess_bug_is_a_500_with_an_id_and_the_log_has_the_traceback(http, image, caplog):
    client, _ = http
    response = client.post("/predict", json={"prompt": "boom", "image": image})
    assert response.status_code == 500
    assert SECRET not in response.text and "TypeError" not in response.text
    error_id = ERROR_ID.match(response.json()["error"]).group(1)
    _logged_id(caplog, error_id)
    # The OpenAI-shaped routes say the same, with the shape's type and code.
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "boom"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}]})
    assert chat.status_code == 500 and SECRET not in chat.text
    error = chat.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert ERROR_ID.match(error["message"])
    # The same model still answers a good request.
    fine = client.post("/predict", json={"prompt": "What color is the shape?", "image": image})
    assert fine.status_code == 200 and fine.json()["output"]


def test_an_infer_bug_fails_only_its_own_item_and_batchmates_get_answers(http, caplog):
    client, servers = http
    engine = servers["shapes-clip"].engine
    ok, bad, ok_too = engine.run([EmbedRequest(text="a red circle"), EmbedRequest(text="boom"),
                                  EmbedRequest(text="a blue square")])
    assert isinstance(ok, Embedding) and isinstance(ok_too, Embedding)
    assert isinstance(bad, InternalError) and SECRET not in bad.message
    _logged_id(caplog, bad.error_id)
    # Through the replica: three requests at once, each with its own answer.
    results = asyncio.run(servers["shapes-clip"].embed(
        [EmbedRequest(text="a red circle"), EmbedRequest(text="boom"), EmbedRequest(text="x")]))
    assert [type(served.result).__name__ for served in results] == [
        "Embedding", "InternalError", "Embedding"]
    # Over HTTP the request that holds the broken input is a 500 naming an id, nothing more.
    response = client.post("/v1/embeddings", json={"model": "shapes-clip",
                                                    "input": ["a red circle", "boom"]})
    assert response.status_code == 500 and SECRET not in response.text
    assert ERROR_ID.match(response.json()["error"]["message"])


def test_a_bug_outside_the_engine_is_a_500_with_an_id(caplog):
    from fastapi.testclient import TestClient

    from serve_app.gateway import Gateway
    from serve_app.routes import build_http_api

    class BrokenModel:
        async def call(self, method, *args):
            raise RuntimeError(SECRET)

        def stream(self, method, *args):
            raise RuntimeError(SECRET)

    config = ServeConfig.for_specs([ModelSpec(model="some/model")])
    client = TestClient(build_http_api(Gateway(config, {"model": BrokenModel()})),
                        raise_server_exceptions=False)
    response = client.post("/predict", json={"prompt": "p", "image": "i", "model": "model"})
    assert response.status_code == 500 and SECRET not in response.text
    _logged_id(caplog, ERROR_ID.match(response.json()["error"]).group(1))


def test_an_internal_error_keeps_its_id_across_a_pickle():
    import pickle

    error = InternalError()
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.error_id, copy.message) == (InternalError, error.error_id, error.message)
