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

A request whose replica is killed just after accepting it could also get no answer at all:
Ray 2.60's owner of the proxy → replica call (a streaming actor task) sometimes never learns
that the task's actor died, so the proxy waited for the response's next piece until the
client gave up (3 times in ~63 kills while requests were in flight; in the one examined, the
task's stream and its completion both stayed pending, its actor the killed replica).
``guard_streams()`` closes that gap in the proxy process: a response piece that has not come
within ``STREAM_CHECK_S`` is checked against its actor's state in the GCS, at most once per
actor per ``STREAM_CHECK_S``, and a dead actor fails the call with ActorDiedError, which this
middleware answers as ``replica_lost``.

Serve loads proxy middlewares from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in the
proxy's environment; ``install()`` sets it in this process before it starts a local Ray (the
Ray processes inherit it). On a cluster, set the variable on every node:
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_edge:proxy_middlewares``.
This module imports nothing heavy: it runs in every proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve_app.proxy_edge:proxy_middlewares"
ADMISSION_HEADER = b"x-raysight-admission"
RETRY_AFTER_S = 1
# How long a response piece may be awaited before its replica's actor is looked up, and how
# long one lookup per actor is reused.
STREAM_CHECK_S = 1.0
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
    header: bytes  # the ADMISSION_HEADER value this route was learnt from


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

        held = pool is not None  # this request holds a place in its pool

        def release() -> None:
            nonlocal held
            if held:
                held = False
                pool.in_flight -= 1

        async def learning_send(message) -> None:
            if message["type"] == "http.response.start":
                message = self._learn(path, message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # The answer is complete: its place is free before its client can send the
                # next request (Serve's proxy returns from the call a moment later).
                release()
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
            release()

    def _learn(self, path: str, start: dict) -> dict:
        """Take ADMISSION_HEADER out of a response start, and note the path's route."""
        headers = start.get("headers") or []
        value = next((v for k, v in headers if k.lower() == ADMISSION_HEADER), None)
        if value is None:
            return start
        known = self.routes.get(path)
        if known is None or known.header != value:  # parse each distinct value once
            told = json.loads(value)
            pool = self.pools.setdefault(told["pool"], ProxyPool(int(told["limit"])))
            pool.limit = int(told["limit"])
            self.routes[path] = ProxyRoute(pool, str(told["retry_after"]).encode(),
                                           json.dumps(told["refusal"]).encode(), value)
        return {**start, "headers": [(k, v) for k, v in headers
                                     if k.lower() != ADMISSION_HEADER]}


def proxy_middlewares() -> list:
    """What Serve's proxy calls (CALLBACK_ENV): the middlewares to wrap its app in (the last
    is outermost: admission refuses before anything else runs), and, in that process, the
    guard on its calls to replicas."""
    from starlette.middleware import Middleware

    from serve_app.body_replay import replay_bodies

    guard_streams()
    replay_bodies()
    return [Middleware(LostReplicaAs503), Middleware(AdmissionAtProxy)]


def guard_streams() -> None:
    """Make this process's waits on a streaming actor call end when the call's actor is dead
    (the lost wake-up described in the module's docstring). Idempotent."""
    from ray._private.object_ref_generator import ObjectRefGenerator

    original = ObjectRefGenerator._next_async
    if getattr(original, "_raysight_guarded", False):
        return
    deaths = _ActorDeaths()

    async def _next_async(self, timeout_s=None):
        if timeout_s is None or timeout_s < 0:  # the proxy's waits: no timeout of their own
            await _until_next_piece(self, deaths)
        return await original(self, timeout_s)

    _next_async._raysight_guarded = True
    ObjectRefGenerator._next_async = _next_async


async def _until_next_piece(generator, deaths: "_ActorDeaths") -> None:
    """Return once the stream's next piece (or its end, or its error) is there; raise
    ActorDiedError if, meanwhile, the actor running the call is dead."""
    from ray.exceptions import ActorDiedError

    stream = generator._generator_ref
    actor = stream.task_id().actor_id()
    if actor.is_nil():
        return  # not an actor call: nothing to watch
    ref, ready = generator.worker.core_worker.peek_object_ref_stream(stream)
    if ready:
        return
    piece = asyncio.ensure_future(generator._suppress_exceptions(ref))
    try:
        while not (await asyncio.wait({piece}, timeout=STREAM_CHECK_S))[0]:
            if await deaths.dead(actor.hex()):
                logger.warning("actor %s died holding call %s, and Ray had not failed the "
                               "call: ending it as a lost replica", actor.hex(),
                               stream.task_id().hex())
                raise ActorDiedError()
    finally:
        piece.cancel()


class _ActorDeaths:
    """Whether an actor is DEAD in the GCS, looked up off the event loop, each answer kept
    for STREAM_CHECK_S (so many waiting calls to one replica cost one lookup a second)."""

    def __init__(self):
        self._known: dict[str, tuple[float, bool]] = {}

    async def dead(self, actor_hex: str) -> bool:
        now = time.monotonic()
        checked = self._known.get(actor_hex)
        if checked is not None and (checked[1] or now - checked[0] < STREAM_CHECK_S):
            return checked[1]
        dead = await asyncio.to_thread(_actor_is_dead, actor_hex)
        if len(self._known) > 1024:  # replicas come and go: keep the table small
            self._known.clear()
        self._known[actor_hex] = (now, dead)
        return dead


def _actor_is_dead(actor_hex: str) -> bool:
    import ray._private.state

    try:
        info = ray._private.state.state.actor_table(actor_hex)
    except Exception:  # noqa: BLE001 - GCS unreachable: no verdict, Ray's own path remains
        return False
    return bool(info) and info.get("State") == "DEAD"


def install() -> None:
    """Have the Serve proxy of a Ray this process starts use these middlewares (call it
    before ``ray.init``; a value already set is kept)."""
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
