"""serve_app/relay.py in front of a real HTTP server in another process (standing in for the
replica's): bytes pass both ways on kept-alive connections, and a server that dies answers
a pending request with the API's JSON 503, and a stream cut between events with an error event."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serve_app import relay as relay_module
from serve_app.relay import Relay

pytestmark = pytest.mark.timeout(60)

UPSTREAM = r'''
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/echo":
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            event = b'data: {"n": 1}\n\n'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        print(self.path, flush=True)  # /hang, or /stream once its first event is out
        time.sleep(600)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


@pytest.fixture
def upstream():
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE,
                               text=True)
    try:
        process.port = int(process.stdout.readline())
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def relay_to(request):
    started: list[Relay] = []

    def start(port: int) -> Relay:
        started.append(Relay("127.0.0.1", 0, port).start())
        return started[-1]

    yield start
    for relay in started:
        relay.stop()


def _url(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


def _dies_while(upstream, marker: str, send):
    """Run `send()` in a thread; kill the upstream once it printed `marker`; send's result."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=send()))
    thread.start()
    assert upstream.stdout.readline().strip() == marker
    upstream.kill()
    thread.join(30)
    assert not thread.is_alive(), "the client got no answer"
    return result["value"]


def test_requests_and_answers_pass_through_on_one_kept_alive_connection(upstream, relay_to):
    relay = relay_to(upstream.port)
    large = bytes(range(256)) * 16_384  # 4 MiB: both sides' flow control comes into play
    with httpx.Client(base_url=_url(relay), timeout=30) as client:
        answers = [client.post("/echo", content=body) for body in (b"one", large, b"three")]
        assert len(relay.links) == 1
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.content for a in answers] == [b"one", large, b"three"]
    assert relay.lost_answers == 0


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(upstream,
                                                                         relay_to):
    relay = relay_to(upstream.port)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as client:
        client.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        client.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
            if reply.endswith(b"hello"):
                break
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nhello"), reply


def test_a_request_whose_server_dies_gets_the_json_503(upstream, relay_to):
    relay = relay_to(upstream.port)
    answer = _dies_while(upstream, "/hang",
                         lambda: httpx.post(_url(relay) + "/hang", content=b"x", timeout=30))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    error = answer.json()["error"]
    assert error["code"] == "replica_lost" and "retry after 1s" in error["message"]
    assert relay.lost_answers == 1


def test_with_no_server_listening_a_request_gets_the_503_at_once(upstream, relay_to):
    relay = relay_to(upstream.port)
    upstream.kill()
    upstream.wait()
    began = time.monotonic()
    answer = httpx.post(_url(relay) + "/echo", content=b"x", timeout=30)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "replica_lost"
    assert time.monotonic() - began < 5
    # Also when the request comes after the relay found nothing listening.
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as client:
        deadline = time.monotonic() + 10
        while not any(link.replica_gone for link in list(relay.links)):
            assert time.monotonic() < deadline, "the relay never tried the server"
            time.sleep(0.01)
        client.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    assert json.loads(body)["error"]["code"] == "replica_lost"


def test_a_stream_cut_between_events_ends_with_an_error_event_and_done(upstream, relay_to):
    relay = relay_to(upstream.port)
    lines: list[str] = []

    def stream() -> int:
        with httpx.stream("POST", _url(relay) + "/stream", content=b"x", timeout=30) as answer:
            lines.extend(answer.iter_lines())
            return answer.status_code

    assert _dies_while(upstream, "/stream", stream) == 200
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[0] == '{"n": 1}' and events[-1] == "[DONE]", events
    error = json.loads(events[-2])["error"]
    assert error["code"] == "replica_lost" and "not retried" in error["message"]


def test_an_idle_client_connection_is_closed(upstream, relay_to, monkeypatch):
    monkeypatch.setattr(relay_module, "IDLE_CLOSE_S", 0.4)
    relay = relay_to(upstream.port)
    with httpx.Client(base_url=_url(relay), timeout=30) as client:
        assert client.post("/echo", content=b"x").status_code == 200
        assert len(relay.links) == 1
        deadline = time.monotonic() + 10
        while relay.links and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not relay.links
        # The client finds its kept-alive connection closed and opens another.
        assert client.post("/echo", content=b"y").content == b"y"


def test_a_taken_port_is_refused_when_starting(upstream, relay_to):
    relay = relay_to(upstream.port)
    with pytest.raises(OSError):
        Relay("127.0.0.1", relay.port, upstream.port).start()
