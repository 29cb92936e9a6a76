"""Every replica that takes an HTTP request gets that request's body, even a second one.

Serve's proxy does not send an HTTP request's body with the call to the replica: the replica
asks the proxy for the request's ASGI messages (``receive_asgi_messages``, called in a loop
until the client disconnects), and the proxy hands out what its per-request queue holds,
removing it. One reader per request is assumed. But Serve's router re-sends a request to
another replica when the one it chose dies before confirming it (in one-hop mode a killed
model replica: serve_app/direct.py). When the dying replica had already fetched the body,
its replacement asked for it and got nothing: it waited for a body that would never come,
until the client gave up (4 requests in 1 of 30 kills, README "How the batching works").

The fix keeps, per request, a log of every message the proxy received from the client, and a
read position per reader instead of one shared queue:

- in the replica (``mark_readers()``, called by raysight's HTTP deployments in their own
  process), each ASGIReceiveProxy - one per request a replica handles - tags the request
  metadata it sends with a reader id of its own;
- in the proxy (``replay_bodies()``, called with the proxy's middlewares), a tagged call gets
  every logged message past that reader's position: a re-sent request's new replica reads the
  body from the start, the old reader's late calls take nothing from it.

An untagged call (a replica without the mark: another application on the same Serve) goes
to Serve's own path unchanged. The log is needed only until the response starts: Serve's router
re-sends a request only before the replica has accepted it, and a replica answers after it has
accepted. So when the response's ``http.response.start`` passes the proxy, the messages every
reader has had are dropped from the log (a chat streaming for minutes does not keep its
multi-MB image in the proxy meanwhile); the log itself goes with the request's queue when the
request ends. Both halves patch Serve internals of the pinned Ray 2.60
(``HTTPProxy.receive_asgi_messages`` and ``send_request_to_replica``,
``ASGIReceiveProxy.__init__``, ``MessageQueue``); each is idempotent. Imports nothing heavy.
"""

from __future__ import annotations

import copy
import logging
import uuid

logger = logging.getLogger(__name__)

READER_ATTR = "_raysight_reader"  # set on the RequestMetadata a reader sends to the proxy


def mark_readers() -> None:
    """In a replica process: make every ASGIReceiveProxy send a reader id of its own with
    its calls for the request's messages. Idempotent."""
    from ray.serve._private.http_util import ASGIReceiveProxy

    original = ASGIReceiveProxy.__init__
    if getattr(original, "_raysight_marked", False):
        return

    def __init__(self, scope, request_metadata, receive_asgi_messages):
        tagged = copy.copy(request_metadata)  # the replica keeps its own object untouched
        setattr(tagged, READER_ATTR, uuid.uuid4().hex)
        original(self, scope, tagged, receive_asgi_messages)

    __init__._raysight_marked = True
    ASGIReceiveProxy.__init__ = __init__


class _RequestLog:
    """The messages of one request taken from its queue so far, and where each reader is.
    Positions count from the request's first message; `dropped` messages are gone (read by
    every reader once the response started)."""

    __slots__ = ("messages", "positions", "dropped")

    def __init__(self):
        self.messages: list = []
        self.positions: dict[str, int] = {}
        self.dropped = 0

    def unread(self, reader: str) -> list:
        if reader not in self.positions and self.positions and (self.messages or self.dropped):
            logger.warning("a second replica reads a request's messages (Serve re-sent it, "
                           "most likely from a lost replica): replaying %d from the start",
                           len(self.messages))
        start = self.positions.get(reader, 0)
        if start < self.dropped:  # Serve re-sends only before the response starts
            logger.warning("a replica reads a request whose response has started: %d "
                           "messages of it are gone", self.dropped - start)
            start = self.dropped
        self.positions[reader] = self.dropped + len(self.messages)
        return self.messages[start - self.dropped:]

    def drop_read(self) -> None:
        """Forget the messages every reader has had (the response has started)."""
        read = min(self.positions.values(), default=self.dropped)
        del self.messages[:read - self.dropped]
        self.dropped = read


async def drop_bodies_once_answered(proxy, internal_request_id: str, messages):
    """Pass on a request's response `messages` (Serve's proxy generator); at the response's
    start, drop what its readers have had from the request's log (the module docstring)."""
    try:
        async for message in messages:
            if isinstance(message, dict) and message.get("type") == "http.response.start":
                queue = proxy.asgi_receive_queues.get(internal_request_id)
                log = getattr(queue, "_raysight_log", None)
                if log is not None:
                    log.drop_read()
            yield message
    finally:
        await messages.aclose()


def replay_bodies() -> None:
    """In Serve's proxy process: answer a tagged ``receive_asgi_messages`` call with every
    message of the request its reader has not had yet (the module docstring). Idempotent."""
    from ray.serve._private.proxy import HTTPProxy

    original = HTTPProxy.receive_asgi_messages
    if getattr(original, "_raysight_replayed", False):
        return

    async def receive_asgi_messages(self, request_metadata):
        reader = getattr(request_metadata, READER_ATTR, None)
        if reader is None:
            return await original(self, request_metadata)
        queue = self.asgi_receive_queues.get(request_metadata.internal_request_id, None)
        if queue is None:
            raise KeyError(f"Request ID {request_metadata.request_id} not found.")
        log = getattr(queue, "_raysight_log", None)
        if log is None:
            log = queue._raysight_log = _RequestLog()
        while True:
            # Serve's queue wakes every waiter at once and empties on the first read: move
            # what it holds to the log, from which each reader takes its own unread part.
            log.messages.extend(queue.get_messages_nowait())
            unread = log.unread(reader)
            if unread or queue._closed:
                return unread
            await queue.wait_for_message()

    receive_asgi_messages._raysight_replayed = True
    HTTPProxy.receive_asgi_messages = receive_asgi_messages
    send = HTTPProxy.send_request_to_replica

    def send_request_to_replica(self, request_id, internal_request_id, *args, **kwargs):
        return drop_bodies_once_answered(
            self, internal_request_id, send(self, request_id, internal_request_id, *args, **kwargs))

    HTTPProxy.send_request_to_replica = send_request_to_replica
