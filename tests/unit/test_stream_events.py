"""The typed stream protocol between the model replica and the HTTP side, without Ray: the
real ModelServer (built-in VLM) and scripted replicas behind the in-process LocalClient."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from pathlib import Path

import pytest

from raysight.errors import InvalidRequest
from raysight.spec import ModelSpec
from serve_app.config import ServeConfig
from serve_app.stream_events import Accepted, Delta, Failed, Final
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
needs_builtin = pytest.mark.skipif(not HAVE_BUILTIN, reason="the built-in models are not built")


class ScriptedReplica:
    """A replica whose generate_stream sends the given events, raising where one is an
    exception (a replica that dies mid-stream)."""

    def __init__(self, events: list):
        self.events = events
        self.closed = False

    async def generate_stream(self, request):
        try:
            for event in self.events:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            self.closed = True


def _client(replica):
    from fastapi.testclient import TestClient

    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs([ModelSpec(model="some/vlm")])
    gateway = Gateway(config, {"vlm": LocalClient(replica)})
    return TestClient(build_http_api(gateway), raise_server_exceptions=False)


def _stream(client, **extra):
    body = {"model": "vlm", "stream": True, "messages": [{"role": "user", "content": "hi"}], **extra}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return response.status_code, lines


def _result(text: str):
    from raysight.engines.generate import GenerateResult

    return GenerateResult(text, [1, 2], prompt_tokens=5, completion_tokens=2, finish_reason="stop")


def test_the_events_pickle_unchanged():
    for event in (Accepted(), Delta("re"), Final(_result("red"), 3, 0.25),
                  Failed(InvalidRequest("no"))):
        copy = pickle.loads(pickle.dumps(event))
        assert type(copy) is type(event)
        if isinstance(event, Failed):
            assert (type(copy.error), copy.error.message) == (InvalidRequest, "no")
        else:
            assert copy == event


def test_the_happy_path_in_order_role_deltas_finish_usage_done():
    replica = ScriptedReplica([Accepted(), Delta("re"), Delta("d"), Final(_result("red"), 2)])
    status, lines = _stream(_client(replica), stream_options={"include_usage": True})
    assert status == 200 and lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["re", "d"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["raysight"] == {"batch_size": 2}  # the Final event's batch
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2
    assert len(chunks) == 5 and replica.closed


def test_a_refusal_before_acceptance_is_a_plain_4xx():
    replica = ScriptedReplica([Failed(InvalidRequest("max_new_tokens=9 is over the limit"))])
    client = _client(replica)
    body = {"model": "vlm", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == "max_new_tokens=9 is over the limit"


def test_a_failure_mid_stream_is_reported_in_the_stream_then_done():
    replica = ScriptedReplica([Accepted(), Delta("re"), Failed(InvalidRequest("gone wrong"))])
    status, lines = _stream(_client(replica))
    assert status == 200 and lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["message"] == "gone wrong" and error["code"] == "invalid_request"
    assert not any("finish_reason" in line and '"stop"' in line for line in lines)


def test_a_replica_that_breaks_mid_stream_sends_an_internal_error_with_an_id(caplog):
    replica = ScriptedReplica([Accepted(), Delta("re"), RuntimeError("secret detail")])
    status, lines = _stream(_client(replica))
    assert status == 200 and lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["code"] == "internal_error" and "secret" not in lines[-2]
    error_id = error["message"].split("error id ")[1].split()[0]
    assert f"error id {error_id}" in caplog.text and "secret detail" in caplog.text


def test_an_event_out_of_protocol_is_an_internal_error_not_a_hang():
    replica = ScriptedReplica([Accepted(), "a bare string", Final(_result("red"))])
    status, lines = _stream(_client(replica))
    assert status == 200 and lines[-1] == "[DONE]"
    assert json.loads(lines[-2])["error"]["code"] == "internal_error"


@needs_builtin
def test_the_replica_sends_accepted_deltas_then_final():
    from raysight.engines.generate import GenerateRequest
    from raysight.shapes import make_shapes
    from serve_app.deployment import ModelServer

    server = ModelServer(ModelSpec(model="builtin:shapes-vlm"))
    image, label = make_shapes(1, seed=8)[0]

    async def collect(request):
        return [event async for event in server.generate_stream(request)]

    events = asyncio.run(collect(GenerateRequest.from_prompt(
        "What color is the shape?", base64.b64encode(png_bytes(image)).decode())))
    assert isinstance(events[0], Accepted) and isinstance(events[-1], Final)
    deltas = events[1:-1]
    assert deltas and all(isinstance(event, Delta) and event.text for event in deltas)
    assert "".join(event.text for event in deltas).strip() == events[-1].result.text == label.color
    assert events[-1].batch_size == 1

    refused = asyncio.run(collect(GenerateRequest.from_prompt("hi", None, max_new_tokens=10**6)))
    assert len(refused) == 1 and isinstance(refused[0], Failed)
    assert "max_new_tokens_limit" in refused[0].error.message
