"""The overload burst's client: many requests at once, each on a keep-alive connection opened
beforehand, over a minimal HTTP/1.1 client on asyncio streams.

Why not httpx, as the other phases use: a fast refusal takes the server well under a
millisecond, while httpx spends about a millisecond of this process's CPU per request. With
300 requests at once that client-side work (building, sending, parsing 300 exchanges on one
event loop, on a machine of 2 cores shared with the server) was a large part of what the burst
measured as the 503s' latency. Here a request is bytes written once and a response is a
status line, headers and a Content-Length body read back; each latency runs from the write
to the last byte of the body.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    """One response: status, headers (lower-case names), body, and seconds from the write."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0


class Connection:
    """One keep-alive HTTP/1.1 connection to host:port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    def close(self) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> Answer:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Length: {len(body)}\r\n")
        if body:
            head += f"Content-Type: {content_type}\r\n"
        sent = time.perf_counter()
        self.writer.write(head.encode() + b"\r\n" + body)
        answer = await self._response()
        answer.seconds = time.perf_counter() - sent
        return answer

    async def _response(self) -> Answer:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        answer = Answer(int(status_line.split()[1]))
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer.headers[name.strip().lower()] = value.strip()
        if "content-length" in answer.headers:
            answer.body = await self.reader.readexactly(int(answer.headers["content-length"]))
        elif answer.headers.get("transfer-encoding", "").lower() == "chunked":
            answer.body = await self._chunks()
        return answer

    async def _chunks(self) -> bytes:
        body = b""
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            body += await self.reader.readexactly(size)
            await self.reader.readline()  # the CRLF after a chunk
        await self.reader.readline()  # the CRLF after the last (empty) chunk
        return body


async def open_connections(host: str, port: int, count: int) -> list[Connection]:
    return list(await asyncio.gather(*(Connection.open(host, port) for _ in range(count))))
