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


def test_install_keeps_a_value_already_set(monkeypatch):
    monkeypatch.delenv(CALLBACK_ENV, raising=False)
    install()
    assert os.environ[CALLBACK_ENV] == CALLBACK
    monkeypatch.setenv(CALLBACK_ENV, "mine:callback")
    install()
    assert os.environ[CALLBACK_ENV] == "mine:callback"
