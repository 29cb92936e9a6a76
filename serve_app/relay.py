"""The front door of direct ingress: a thin relay on the app's port in front of the replica.

With direct ingress (serve_app/direct_ingress.py) the model's replica runs its own HTTP server,
so no Serve proxy sits between a client and the model. Without something in front, though, a
client's connection is with the replica process itself: when that process dies, the client
gets a reset connection instead of the JSON 503 ``replica_lost`` that Serve's proxy path
answers (serve_app/proxy_edge.py). The relay keeps that promise for the price of passing
bytes: it listens on the port the user asked for, in the `raysight serve` process, and joins
every client connection to one connection of its own to the replica's server on a loopback
port. It does not parse requests; it follows the replica's responses with httptools (C), only
to know where each one stands when the replica goes away:

- a request sent and no response begun: the client gets the JSON 503 ``replica_lost`` with
  Retry-After, as through the proxy, and the connection closes;
- a chunked event stream (``stream: true``) between two chunks: the stream ends with an
  ``error`` event carrying the same message, then ``[DONE]``, as a generation the replica
  itself fails ends;
- anything else (no request pending, or in the middle of a body): the connection closes.

While no replica listens (one was lost and its replacement is loading its model), a request
gets the same 503 at once. A client that pipelines requests (sends the next before the answer
to the last) may get a bare close for those past the first; HTTP clients seldom pipeline.

An idle client connection is closed after ``IDLE_CLOSE_S``, before the replica's server would
close its end (Serve's keep-alive is 90 s): a request sent just as the replica closed an idle
connection would otherwise look like a lost replica. The relay runs on an event loop of its own
(uvloop when installed) in a daemon thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import httptools

from serve_app.proxy_edge import LOST_BODY, RETRY_AFTER_S

# Idle client connections are closed after this long (Serve's replica server keeps one 90 s).
IDLE_CLOSE_S = 60.0

_LOST_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(LOST_BODY)).encode() + b"\r\n"
    b"retry-after: " + str(RETRY_AFTER_S).encode() + b"\r\nconnection: close\r\n\r\n" + LOST_BODY)


def _stream_end() -> bytes:
    """The last chunk of an event stream cut short, in the app's own events (its ChunkWriter):
    a `replica_lost` error event, then [DONE]; then the chunked body's end."""
    from serve_app.gateway import ReplicaLost
    from serve_app.openai_api import ChunkWriter, error_body

    lost = ReplicaLost("the model replica running this request was lost (it died or was "
                       "restarted) while it streamed its answer; the request was not retried",
                       RETRY_AFTER_S)
    events = (ChunkWriter.error(error_body(lost)) + ChunkWriter.done()).encode()
    return f"{len(events):x}\r\n".encode() + events + b"\r\n0\r\n\r\n"


_LOST_STREAM_END = _stream_end()


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (IPv6 when the host is); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


class _Link:
    """One client connection and the relay's connection to the replica for it."""

    def __init__(self, relay: "Relay"):
        self.relay = relay
        self.client: asyncio.Transport | None = None
        self.replica: asyncio.Transport | None = None
        self.early: list[bytes] = []  # client bytes sent before the replica connection opened
        self.replica_gone = False
        self.opened = False  # the replica connection was opened (it may be closed since)
        self.client_done = False  # the client half-closed its side after its request
        self.awaiting = False  # the client sent bytes that have no complete response yet
        self.responding = False  # a response has begun and not ended
        self.event_stream = False  # ...and it is a chunked text/event-stream
        self.in_chunk = False  # ...and the bytes passed on end inside one of its chunks
        self.last_active = time.monotonic()
        self.parser: object | None = httptools.HttpResponseParser(self)

    # httptools callbacks on the replica's bytes
    def on_message_begin(self) -> None:
        self.responding, self.event_stream, self.in_chunk = True, False, False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
            self.event_stream = True

    def on_chunk_header(self) -> None:
        self.in_chunk = True

    def on_chunk_complete(self) -> None:
        self.in_chunk = False

    def on_message_complete(self) -> None:
        self.responding = self.awaiting = False

    # the two sides
    def idle_since(self, now: float) -> float:
        """Seconds since the last byte either way, 0 while a request is open."""
        return 0.0 if self.awaiting or self.responding else now - self.last_active

    def from_client(self, data: bytes) -> None:
        self.awaiting, self.last_active = True, time.monotonic()
        if self.replica is not None:
            self.replica.write(data)
        elif self.replica_gone:
            self.answer_lost()
        else:
            self.early.append(data)

    def from_replica(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except Exception:  # noqa: BLE001 - an answer it cannot follow is still passed on
                self.parser = None
                self.responding = True
        if self.client is not None:
            self.client.write(data)

    def replica_connected(self, transport: asyncio.Transport) -> None:
        if self.client is None:  # the client left while this connection opened
            transport.close()
            return
        self.replica, self.opened = transport, True
        if self.early:
            transport.write(b"".join(self.early))
            self.early.clear()
        if self.client_done:
            transport.write_eof()

    def client_eof(self) -> None:
        """The client finished sending (a half-close): pass it on, keep the answer coming."""
        self.client_done = True
        if self.replica is not None and self.replica.can_write_eof():
            self.replica.write_eof()

    def replica_lost(self) -> None:
        """The replica's connection closed (or never opened): end the client's as it stands."""
        self.replica, self.replica_gone = None, True
        if self.client is None or self.client.is_closing():
            return
        if self.responding:
            if self.event_stream and not self.in_chunk and self.parser is not None:
                self.client.write(_LOST_STREAM_END)
            self.client.close()
        elif self.awaiting:
            self.answer_lost()
        elif self.opened:
            self.client.close()  # idle: the client reconnects for its next request
        # else the connection never opened: the request, when it comes, gets the 503

    def answer_lost(self) -> None:
        self.relay.lost_answers += 1
        self.client.write(_LOST_RESPONSE)
        self.client.close()

    def client_lost(self) -> None:
        self.client = None
        if self.replica is not None:
            self.replica.close()


class _Side(asyncio.Protocol):
    """One of a link's two connections. Flow control: while this side's peer reads slower than
    the other side writes, the other side is not read."""

    link: _Link

    def _other(self) -> asyncio.Transport | None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.resume_reading()


class _ClientSide(_Side):
    def __init__(self, relay: "Relay"):
        self.link = _Link(relay)
        self.relay = relay

    def _other(self) -> asyncio.Transport | None:
        return self.link.replica

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.link.client = transport
        self.relay.links.add(self.link)
        self.relay.connect(self.link)

    def data_received(self, data: bytes) -> None:
        self.link.from_client(data)

    def eof_received(self) -> bool:
        self.link.client_eof()
        return True  # keep the connection open for the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.links.discard(self.link)
        self.link.client_lost()


class _ReplicaSide(_Side):
    def __init__(self, link: _Link):
        self.link = link

    def _other(self) -> asyncio.Transport | None:
        return self.link.client

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.link.replica_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.link.from_replica(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.replica_lost()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with Serve's uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Relay:
    """Listens on `host`:`port` and relays each connection to the replica's HTTP server on
    127.0.0.1:`replica_port` (see the module docstring). `start()` returns once it listens
    (or raises OSError when the port is taken); `stop()` closes it and every connection."""

    def __init__(self, host: str, port: int, replica_port: int):
        self.host, self.port, self.replica_port = host, port, replica_port
        self.links: set[_Link] = set()
        self.lost_answers = 0  # JSON 503s the relay answered for a lost replica
        self._connecting: set[asyncio.Task] = set()  # held: the loop keeps only weak references
        self._loop = _new_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="raysight-relay",
                                        daemon=True)

    def start(self) -> "Relay":
        try:
            listening = listening_socket(self.host, self.port)
        except OSError:
            self._loop.close()
            raise
        self.port = listening.getsockname()[1]
        self._thread.start()
        self._server = self._call(self._loop.create_server(
            lambda: _ClientSide(self), sock=listening))
        self._loop.call_soon_threadsafe(self._sweep)
        return self

    def _sweep(self) -> None:
        """Close client connections idle for IDLE_CLOSE_S; runs every few seconds."""
        now = time.monotonic()
        for link in [link for link in self.links if link.idle_since(now) > IDLE_CLOSE_S]:
            if link.client is not None:
                link.client.close()
        self._loop.call_later(min(10.0, IDLE_CLOSE_S / 4), self._sweep)

    def connect(self, link: _Link) -> None:
        """Open the replica connection for a new client connection (on the relay's loop)."""
        async def connect() -> None:
            try:
                await self._loop.create_connection(lambda: _ReplicaSide(link), "127.0.0.1",
                                                   self.replica_port)
            except OSError:  # no replica listens: it is lost, its replacement is loading
                link.replica_lost()

        task = self._loop.create_task(connect())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close every connection and end the relay's thread."""
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self.links):
                for transport in (link.client, link.replica):
                    if transport is not None:
                        transport.abort()

        try:
            self._call(close(), timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self._loop.close()

    def cpu_seconds(self) -> float | None:
        """CPU seconds the relay's thread has used (user + system), None where the system
        does not say (read from Linux's /proc)."""
        try:
            with open(f"/proc/self/task/{self._thread.native_id}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _call(self, coroutine, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)
