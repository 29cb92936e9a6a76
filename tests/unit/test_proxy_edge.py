"""serve_app/proxy_edge.py without Ray: the proxy middleware's two cases, as plain ASGI."""

from __future__ import annotations

import asyncio
import json
import os

from serve_app.proxy_edge import CALLBACK, CALLBACK_ENV, LostReplicaAs503, install


def _call(app) -> list[dict]:
    """Run `app` behind the middleware on one POST; the messages it sent."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}
    asyncio.run(LostReplicaAs503(app)(scope, receive, send))
    return sent


def test_a_request_the_proxy_got_no_answer_for_is_a_json_503():
    async def lost(scope, receive, send):  # what Serve's proxy does on a dead replica
        return None

    start, body = _call(lost)
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    assert json.loads(body["body"])["error"]["code"] == "replica_lost"


def test_an_answer_from_the_app_passes_untouched():
    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "ours"}'})

    start, body = _call(answered)
    assert (start["status"], body["body"]) == (500, b'{"error": "ours"}')


def test_serves_plain_text_refusal_becomes_the_json_overloaded_shape():
    async def full_queue(scope, receive, send):  # Serve's BackPressureError answer
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"3")]})
        await send({"type": "http.response.body", "body": b"Request dropped", "more_body": True})
        await send({"type": "http.response.body", "body": b" due to backpressure"})

    start, body = _call(full_queue)
    assert start["status"] == 503 and dict(start["headers"])[b"retry-after"] == b"3"
    assert json.loads(body["body"])["error"]["code"] == "overloaded"


def test_raysights_own_503_passes_untouched():
    ours = b'{"error": {"code": "overloaded"}}'

    async def json_503(scope, receive, send):
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": ours})

    start, body = _call(json_503)
    assert (start["status"], body["body"]) == (503, ours)


def test_install_keeps_a_value_already_set(monkeypatch):
    monkeypatch.delenv(CALLBACK_ENV, raising=False)
    install()
    assert os.environ[CALLBACK_ENV] == CALLBACK
    monkeypatch.setenv(CALLBACK_ENV, "mine:callback")
    install()
    assert os.environ[CALLBACK_ENV] == "mine:callback"
