"""serve_app/body_replay.py on Serve's own classes, in one process: the proxy's
receive_asgi_messages (patched) over a real MessageQueue, read by real ASGIReceiveProxy
readers (marked) through a pickling stand-in for the actor call. The kill that makes Serve
re-send a request is tests/integration/test_serve_direct.py's."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

from serve_app.body_replay import drop_bodies_once_answered, mark_readers, replay_bodies

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
    patched = (HTTPProxy.receive_asgi_messages, HTTPProxy.send_request_to_replica,
               ASGIReceiveProxy.__init__)
    replay_bodies()
    mark_readers()
    assert (HTTPProxy.receive_asgi_messages, HTTPProxy.send_request_to_replica,
            ASGIReceiveProxy.__init__) == patched


START = {"type": "http.response.start", "status": 200, "headers": []}
ANSWER = {"type": "http.response.body", "body": b"{}", "more_body": False}


def test_the_body_is_dropped_once_the_response_starts_and_the_disconnect_still_arrives():
    from ray.serve._private.http_util import ASGIReceiveProxy

    closed = []

    async def response():  # what Serve's send_request_to_replica yields: messages, a status
        try:
            yield [START]  # not a message: Serve's batches go through untouched
            yield START
            yield ANSWER
            yield "200"
        finally:
            closed.append(True)

    async def scenario():
        queue, metadata, call = _proxy_and_request()
        proxy = SimpleNamespace(asgi_receive_queues={"internal-1": queue})
        for message in BODY:
            queue.put_nowait(message)
        reader = ASGIReceiveProxy({"type": "http"}, metadata, call)
        fetch = asyncio.ensure_future(reader.fetch_until_disconnect())
        assert await asyncio.wait_for(_read_body(reader), 5) == b'{"input": ["x"]}'
        log = queue._raysight_log
        assert log.messages == BODY  # kept for a re-send until the response starts
        passed = []
        async for message in drop_bodies_once_answered(proxy, "internal-1", response()):
            passed.append(message)
            if message is START:
                assert log.messages == [] and log.dropped == 2
        assert passed == [[START], START, ANSWER, "200"] and closed == [True]
        queue.put_nowait(DISCONNECT)  # the reader still hears the client leave
        queue.close()
        await asyncio.wait_for(fetch, 5)
        assert await reader() == DISCONNECT
        # A reader arriving after the start (Serve does not re-send then) gets no body.
        late = ASGIReceiveProxy({"type": "http"}, metadata, call)
        await asyncio.wait_for(late.fetch_until_disconnect(), 5)
        assert await late() == DISCONNECT

    asyncio.run(scenario())


def test_only_what_every_reader_has_had_is_dropped():
    from serve_app.body_replay import READER_ATTR

    async def scenario():
        queue, metadata, call = _proxy_and_request()
        proxy = SimpleNamespace(asgi_receive_queues={"internal-1": queue})
        setattr(metadata, READER_ATTR, "reader-1")  # as a marked ASGIReceiveProxy sends it
        queue.put_nowait(BODY[0])
        assert pickle.loads(await call(metadata)) == [BODY[0]]
        queue.put_nowait(BODY[1])
        pickle.loads(await call(metadata))  # the log holds both, the reader has both
        queue.put_nowait(DISCONNECT)  # in the queue, not yet read by the reader

        async def response():
            yield START

        async for _ in drop_bodies_once_answered(proxy, "internal-1", response()):
            pass
        log = queue._raysight_log
        assert log.dropped == 2 and log.messages == []
        queue.close()
        assert pickle.loads(await call(metadata)) == [DISCONNECT]
        # Kept: a message the reader has not had yet when the response starts.
        queue2, metadata2, call2 = _proxy_and_request()
        proxy.asgi_receive_queues["internal-1"] = queue2
        setattr(metadata2, READER_ATTR, "reader-2")
        queue2.put_nowait(BODY[0])
        assert pickle.loads(await call2(metadata2)) == [BODY[0]]
        queue2.put_nowait(BODY[1])
        queue2._raysight_log.messages.extend(queue2.get_messages_nowait())  # logged, unread
        async for _ in drop_bodies_once_answered(proxy, "internal-1", response()):
            pass
        assert queue2._raysight_log.dropped == 1 and queue2._raysight_log.messages == [BODY[1]]
        queue2.close()
        assert pickle.loads(await call2(metadata2)) == [BODY[1]]

    asyncio.run(scenario())


def test_closing_early_closes_serves_generator():
    closed = []

    async def response():
        try:
            yield START
            yield ANSWER
        finally:
            closed.append(True)

    async def scenario():
        proxy = SimpleNamespace(asgi_receive_queues={})  # the request had no body log
        messages = drop_bodies_once_answered(proxy, "internal-1", response())
        assert await messages.__anext__() is START
        await messages.aclose()  # the client went away: the proxy stops reading

    asyncio.run(scenario())
    assert closed == [True]
