"""serve_app/proxy_edge.py without Ray: the proxy middlewares (a lost replica, admission),
as plain ASGI."""

from __future__ import annotations

import asyncio
import json
import os

from serve_app.proxy_edge import (ADMISSION_HEADER, CALLBACK, CALLBACK_ENV, AdmissionAtProxy,
                                 LostReplicaAs503, install)


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


# --- admission at the proxy ------------------------------------------------------------


def _told(limit: int = 2, pool: str = "raysight/generate", flat: bool = False) -> bytes:
    from serve_app.proxy_edge import admission_header

    message = f"at capacity ({limit})"
    refusal = {"error": message} if flat else {
        "error": {"message": message, "type": "server_error", "code": "overloaded"}}
    return admission_header(pool, limit, 3, refusal)


class HeldApp:
    """An ingress stand-in: answers with the admission header, holding each request until
    `release` is set; counts the requests it got and the body reads it made."""

    def __init__(self, told: bytes, told_on: dict[str, bytes] | None = None):
        self.told = told
        self.told_on = told_on or {}  # another header value for some paths
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await receive()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (ADMISSION_HEADER, self.told_on.get(scope["path"], self.told))]})
        await send({"type": "http.response.body", "body": b"{}"})


async def _request(app, path: str) -> list[dict]:
    sent: list[dict] = []
    reads = 0

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
    sent.append({"type": "reads", "reads": reads})
    return sent


def test_the_proxy_refuses_past_the_pool_limit_without_calling_the_ingress():
    async def scenario():
        ingress = HeldApp(_told(limit=2))
        proxy = AdmissionAtProxy(ingress)
        ingress.release.set()
        # The first answer on the route teaches the proxy its pool; the client never sees
        # the header.
        [start, _, _] = await _request(proxy, "/v1/chat/completions")
        assert start["status"] == 200
        assert ADMISSION_HEADER not in dict(start["headers"])
        ingress.release.clear()
        held = [asyncio.create_task(_request(proxy, path))
                for path in ("/v1/chat/completions", "/v1/chat/completions")]
        await asyncio.sleep(0.01)
        assert ingress.calls == 3
        refused = await _request(proxy, "/v1/chat/completions")
        ingress.release.set()
        answered = await asyncio.gather(*held)
        after = await _request(proxy, "/v1/chat/completions")
        return ingress, refused, answered, after

    ingress, refused, answered, after = asyncio.run(scenario())
    start, body, reads = refused
    assert start["status"] == 503 and reads["reads"] == 0  # the body was never read
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"3" and headers[b"content-type"] == b"application/json"
    assert json.loads(body["body"])["error"] == {
        "message": "at capacity (2)", "type": "server_error", "code": "overloaded"}
    assert [messages[0]["status"] for messages in answered] == [200, 200]
    assert after[0]["status"] == 200  # room again once the held two finished
    assert ingress.calls == 4  # the refused request never reached the ingress


def test_routes_of_one_pool_share_its_count_and_other_routes_pass():
    async def scenario():
        # /predict's refusal has its own (flat) shape; the pool and its count are shared.
        ingress = HeldApp(_told(limit=1), {"/predict": _told(limit=1, flat=True)})
        proxy = AdmissionAtProxy(ingress)
        ingress.release.set()
        for path in ("/v1/chat/completions", "/predict"):  # both learn the same pool
            await _request(proxy, path)
        ingress.release.clear()
        held = asyncio.create_task(_request(proxy, "/predict"))
        await asyncio.sleep(0.01)
        refused = await _request(proxy, "/v1/chat/completions")
        unknown = asyncio.create_task(_request(proxy, "/v1/embeddings"))  # no pool known
        await asyncio.sleep(0.01)
        calls = ingress.calls
        ingress.release.set()
        await asyncio.gather(held, unknown)
        return refused, calls

    refused, calls = asyncio.run(scenario())
    assert refused[0]["status"] == 503
    assert json.loads(refused[1]["body"])["error"]["code"] == "overloaded"  # chat's shape
    assert calls == 4  # 2 learning + the held /predict + /v1/embeddings, not the refused one


def test_a_new_limit_from_the_ingress_replaces_the_old_one():
    async def scenario():
        ingress = HeldApp(_told(limit=1))
        proxy = AdmissionAtProxy(ingress)
        ingress.release.set()
        await _request(proxy, "/search")
        ingress.told = _told(limit=5)
        await _request(proxy, "/search")
        return proxy

    proxy = asyncio.run(scenario())
    [pool] = proxy.pools.values()
    assert (pool.limit, pool.in_flight) == (5, 0)


def test_a_place_is_free_once_its_answer_is_complete():
    # Serve's proxy returns from the call a moment after the answer's last byte; a client
    # that sends its next request at once must find its place free (capacity 1 here).
    class LingeringApp(HeldApp):
        def __init__(self, told: bytes):
            super().__init__(told)
            self.linger = False
            self.lingering = asyncio.Event()
            self.done_lingering = asyncio.Event()

        async def __call__(self, scope, receive, send):
            await super().__call__(scope, receive, send)
            if self.linger:
                self.linger = False
                self.lingering.set()
                await self.done_lingering.wait()

    async def scenario():
        ingress = LingeringApp(_told(limit=1))
        proxy = AdmissionAtProxy(ingress)
        ingress.release.set()
        await _request(proxy, "/search")  # learns the pool of /search
        ingress.linger = True
        first = asyncio.create_task(_request(proxy, "/search"))
        await ingress.lingering.wait()  # answered in full, the call not yet returned
        second = await _request(proxy, "/search")
        ingress.done_lingering.set()
        await first
        return second, proxy

    second, proxy = asyncio.run(scenario())
    assert second[0]["status"] == 200
    [pool] = proxy.pools.values()
    assert pool.in_flight == 0  # released once, not twice
