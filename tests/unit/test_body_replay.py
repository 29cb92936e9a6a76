"""serve_app/body_replay.py on Serve's own classes, in one process: the proxy's
receive_asgi_messages (patched) over a real MessageQueue, read by real ASGIReceiveProxy
readers (marked) through a pickling stand-in for the actor call. The kill that makes Serve
re-send a request is tests/integration/test_serve_direct.py's."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

from serve_app.body_replay import mark_readers, replay_bodies

BODY = [{"type": "http.request", "body": b'{"input": ', "more_body": True},
        {"type": "http.request", "body": b'["x"]}', "more_body": False}]
DISCONNECT = {"type": "http.disconnect"}


def _proxy_and_request():
    """A stand-in for the proxy actor holding one request's queue, the request's metadata,
    and the actor call a replica makes (arguments and answer pickled, as Ray does)."""
    from ray.serve._private.common import RequestMetadata
    from ray.serve._private.http_util import MessageQueue
    from ray.serve._private.proxy import HTTPProxy

    replay_bodies()
    mark_readers()
    queue = MessageQueue()
    proxy = SimpleNamespace(asgi_receive_queues={"internal-1": queue})
    metadata = RequestMetadata(request_id="r1", internal_request_id="internal-1")

    async def call(request_metadata):
        sent = pickle.loads(pickle.dumps(request_metadata))
        return pickle.dumps(await HTTPProxy.receive_asgi_messages(proxy, sent))

    return queue, metadata, call


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            return body


def test_a_second_reader_of_a_request_gets_its_whole_body_and_the_disconnect():
    from ray.serve._private.http_util import ASGIReceiveProxy

    async def scenario():
        queue, metadata, call = _proxy_and_request()
        for message in BODY:
            queue.put_nowait(message)
        first = ASGIReceiveProxy({"type": "http"}, metadata, call)
        first_fetch = asyncio.ensure_future(first.fetch_until_disconnect())
        assert await asyncio.wait_for(_read_body(first), 5) == b'{"input": ["x"]}'
        # The first replica is lost with its fetch pending; Serve re-sends the request.
        second = ASGIReceiveProxy({"type": "http"}, metadata, call)
        second_fetch = asyncio.ensure_future(second.fetch_until_disconnect())
        assert await asyncio.wait_for(_read_body(second), 5) == b'{"input": ["x"]}'
        queue.put_nowait(DISCONNECT)  # the client leaves: every reader still hears it
        queue.close()
        await asyncio.wait_for(asyncio.gather(first_fetch, second_fetch), 5)
        assert await first() == DISCONNECT and await second() == DISCONNECT

    asyncio.run(scenario())


def test_one_reader_gets_each_message_once_in_order():
    async def scenario():
        queue, metadata, call = _proxy_and_request()
        from ray.serve._private.http_util import ASGIReceiveProxy

        reader = ASGIReceiveProxy({"type": "http"}, metadata, call)
        fetch = asyncio.ensure_future(reader.fetch_until_disconnect())
        queue.put_nowait(BODY[0])
        await asyncio.sleep(0.05)  # the reader has taken the first piece and waits again
        queue.put_nowait(BODY[1])
        queue.put_nowait(DISCONNECT)
        queue.close()
        await asyncio.wait_for(fetch, 5)
        got = [await reader() for _ in range(3)]
        assert got == BODY + [DISCONNECT]

    asyncio.run(scenario())


def test_a_reader_without_the_mark_takes_serves_own_path():
    async def scenario():
        queue, metadata, call = _proxy_and_request()
        for message in BODY:
            queue.put_nowait(message)
        # Serve's own path: the queue is emptied by the read, nothing is kept for another.
        assert pickle.loads(await call(metadata)) == BODY
        assert not hasattr(queue, "_raysight_log") and queue.get_messages_nowait() == []

    asyncio.run(scenario())


def test_marking_and_replaying_twice_patch_once():
    from ray.serve._private.http_util import ASGIReceiveProxy
    from ray.serve._private.proxy import HTTPProxy

    replay_bodies()
    mark_readers()
    receive, init = HTTPProxy.receive_asgi_messages, ASGIReceiveProxy.__init__
    replay_bodies()
    mark_readers()
    assert HTTPProxy.receive_asgi_messages is receive and ASGIReceiveProxy.__init__ is init
