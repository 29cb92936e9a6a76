"""The one piece of raysight that runs in Serve's HTTP proxy: a lost replica is a 503.

When the replica holding an HTTP request dies, Serve's proxy starts no response and uvicorn
answers a bare ``500 Internal Server Error``. With a separate ingress the ingress turned that
into a retry or a 503; an app of one model answers HTTP from the model replica itself
(serve_app/direct.py), so the proxy is the only place left to do it. This middleware sees
every response the proxy sends; when the application ended without starting one, it sends
the API's JSON 503 ``replica_lost`` with Retry-After instead. Serve's own plain-text 503
(the replica's queue is full: ``max_queued_requests``) becomes the API's JSON 503
``overloaded``, keeping its Retry-After. Every response of raysight's own (JSON) passes
untouched.

Serve loads proxy middlewares from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in the
proxy's environment; ``install()`` sets it in this process before it starts a local Ray (the
Ray processes inherit it). On a cluster, set the variable on every node:
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_edge:proxy_middlewares``.
"""

from __future__ import annotations

import json
import os

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_app.proxy_edge:proxy_middlewares"
RETRY_AFTER_S = 1
LOST_BODY = json.dumps({"error": {
    "message": "the model replica running this request was lost (it died or was restarted) "
               f"before it answered; retry after {RETRY_AFTER_S}s",
    "type": "server_error", "code": "replica_lost"}}).encode()
OVERLOADED_BODY = json.dumps({"error": {
    "message": "the model is at capacity (its queue is full); retry after the Retry-After "
               "header's seconds", "type": "server_error", "code": "overloaded"}}).encode()


class LostReplicaAs503:
    """ASGI middleware: an HTTP request that got no response from the app gets a JSON 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = False

        async def watched_send(message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers") or [])
                if message["status"] == 503 and not headers.get(
                        b"content-type", b"").startswith(b"application/json"):
                    # Serve's own refusal (the replica's queue is full): in the API's shape.
                    replaced = True
                    retry = headers.get(b"retry-after", str(RETRY_AFTER_S).encode())
                    await _send_json(send, 503, OVERLOADED_BODY, retry)
                    return
            if replaced:
                return  # the body of the refusal replaced above
            await send(message)

        await self.app(scope, receive, watched_send)
        if not started:  # the proxy lost the replica (a client that left raises instead)
            await _send_json(send, 503, LOST_BODY, str(RETRY_AFTER_S).encode())


async def _send_json(send, status: int, body: bytes, retry_after: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", retry_after)]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """What Serve's proxy calls (CALLBACK_ENV): the middlewares to wrap its app in."""
    from starlette.middleware import Middleware

    return [Middleware(LostReplicaAs503)]


def install() -> None:
    """Have the Serve proxy of a Ray this process starts use these middlewares (call it
    before ``ray.init``; a value already set is kept)."""
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
