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
to Serve's own path unchanged. The log lives as long as the request's queue (the proxy drops
both when the request ends), so a body is held twice only while its request is in flight.
Both halves patch Serve internals of the pinned Ray 2.60 (``HTTPProxy.receive_asgi_messages``,
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
    """The messages of one request taken from its queue so far, and where each reader is."""

    __slots__ = ("messages", "positions")

    def __init__(self):
        self.messages: list = []
        self.positions: dict[str, int] = {}

    def unread(self, reader: str) -> list:
        if reader not in self.positions and self.positions and self.messages:
            logger.warning("a second replica reads a request's messages (Serve re-sent it, "
                           "most likely from a lost replica): replaying %d from the start",
                           len(self.messages))
        start = self.positions.get(reader, 0)
        self.positions[reader] = len(self.messages)
        return self.messages[start:]


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
