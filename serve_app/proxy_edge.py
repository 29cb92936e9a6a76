"""The piece of raysight that runs in Serve's HTTP proxy: overload and a lost replica are
JSON 503s, and a request past a model's capacity is refused there, never passed on.

Admission (``AdmissionAtProxy``). Under a burst, a refusal that the ingress makes still costs
the proxy and the ingress their whole per-request work (two actor hops, ~5 CPU-ms) and waits
behind every request queued on them: 300 chats at once got their 503s in seconds. So the
ingress tells the proxy, in a header of every answer on a model route
(``x-raysight-admission``, stripped before the client sees it), which pool of models the
route's requests go to, how many those models hold at once, and the exact 503 to send past
that. The proxy counts the requests it has passed on per pool, and refuses at once, without
reading the body or calling the ingress, any request that would go beyond the limit. A route
the proxy has not seen an answer for yet is passed on (the ingress's own admission still
applies), so the limit binds from the second request on. With several proxies (one per node)
each counts its own requests: a proxy refuses only what would overfill the models by itself.

Lost replica (``LostReplicaAs503``). When the replica holding an HTTP request dies, Serve's
proxy starts no response and uvicorn answers a bare ``500 Internal Server Error``. With a
separate ingress the ingress turned that into a retry or a 503; an app of one model answers
HTTP from the model replica itself (serve_app/direct.py), so the proxy is the only place left
to do it. This middleware sees every response the proxy sends; when the application ended
without starting one, it sends the API's JSON 503 ``replica_lost`` with Retry-After instead.
Serve's own plain-text 503 (the replica's queue is full: ``max_queued_requests``) becomes the
API's JSON 503 ``overloaded``, keeping its Retry-After. Every response of raysight's own
(JSON) passes untouched.

Serve loads proxy middlewares from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in the
proxy's environment; ``install()`` sets it in this process before it starts a local Ray (the
Ray processes inherit it). On a cluster, set the variable on every node:
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_edge:proxy_middlewares``.
This module imports nothing heavy: it runs in every proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_app.proxy_edge:proxy_middlewares"
ADMISSION_HEADER = b"x-raysight-admission"
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


@dataclass
class ProxyPool:
    """One pool of models as the proxy knows it from the ingress's header."""

    limit: int
    in_flight: int = 0  # requests of the pool this proxy has passed on and not finished


@dataclass
class ProxyRoute:
    """A path's pool and the 503 a request to it gets when the pool is full (the error's
    shape can differ between the routes of one pool: /predict's is flat)."""

    pool: ProxyPool
    retry_after: bytes
    refusal: bytes  # the whole JSON body of the 503


def admission_header(pool: str, limit: int, retry_after_s: int, refusal: dict) -> bytes:
    """The value of ADMISSION_HEADER the ingress adds to an answer on a model route."""
    return json.dumps({"pool": pool, "limit": limit, "retry_after": retry_after_s,
                       "refusal": refusal}, separators=(",", ":")).encode()


class AdmissionAtProxy:
    """ASGI middleware: refuse a request at the proxy when its pool of models is full (see
    the module docstring); learn each route's pool from ADMISSION_HEADER on its answers."""

    def __init__(self, app):
        self.app = app
        self.pools: dict[str, ProxyPool] = {}  # by the pool's key
        self.routes: dict[str, ProxyRoute] = {}  # by request path
        self._seen: dict[str, bytes] = {}  # the header value each route was learnt from
        self.refused = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = self.routes.get(path)
        pool = route.pool if route is not None else None
        if pool is not None and pool.in_flight >= pool.limit:
            self.refused += 1
            await _send_json(send, 503, route.refusal, route.retry_after)
            return

        async def learning_send(message) -> None:
            if message["type"] == "http.response.start":
                message = self._learn(path, message)
            await send(message)

        if pool is not None:
            pool.in_flight += 1
        try:
            if pool is not None:
                # Passing a request on costs Serve's proxy a few ms; refusing one, a few µs.
                # Requests of a burst arrive together: let the refusals among them go first.
                await asyncio.sleep(0)
            await self.app(scope, receive, learning_send)
        finally:
            if pool is not None:
                pool.in_flight -= 1

    def _learn(self, path: str, start: dict) -> dict:
        """Take ADMISSION_HEADER out of a response start, and note the path's route."""
        headers = start.get("headers") or []
        value = next((v for k, v in headers if k.lower() == ADMISSION_HEADER), None)
        if value is None:
            return start
        if self._seen.get(path) != value:  # parse each distinct value once
            told = json.loads(value)
            pool = self.pools.setdefault(told["pool"], ProxyPool(int(told["limit"])))
            pool.limit = int(told["limit"])
            self.routes[path] = ProxyRoute(pool, str(told["retry_after"]).encode(),
                                           json.dumps(told["refusal"]).encode())
            self._seen[path] = value
        return {**start, "headers": [(k, v) for k, v in headers
                                     if k.lower() != ADMISSION_HEADER]}


def proxy_middlewares() -> list:
    """What Serve's proxy calls (CALLBACK_ENV): the middlewares to wrap its app in (the last
    is outermost: admission refuses before anything else runs)."""
    from starlette.middleware import Middleware

    return [Middleware(LostReplicaAs503), Middleware(AdmissionAtProxy)]


def install() -> None:
    """Have the Serve proxy of a Ray this process starts use these middlewares (call it
    before ``ray.init``; a value already set is kept)."""
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
