"""A generation stops soon after its client disconnects, with either scheduler: the whole
HTTP app on uvicorn (LocalClient, no Ray), a real socket closed mid-stream, a tiny random
Qwen2-VL that would otherwise write every one of its max_tokens."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time

import pytest

from raysight.engines.generate import GenerateRequest
from raysight.spec import ModelSpec
from tests.api_server import free_port
from tests.conftest import noise_image, png_bytes

MAX_TOKENS = 300


@contextlib.contextmanager
def _serving(spec: ModelSpec):
    import uvicorn

    from serve_app.config import ServeConfig
    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    server = ModelServer(spec, torch_threads=1)
    gateway = Gateway(ServeConfig.for_specs([spec]), {spec.served_name: LocalClient(server)})
    port = free_port()
    http = uvicorn.Server(uvicorn.Config(build_http_api(gateway), host="127.0.0.1", port=port,
                                         log_level="warning", lifespan="off"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        thread.join(timeout=10)
        server.batcher.close()


def _body(image_png: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image_png).decode()
    return {"stream": True, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Describe the image."}]}]}


def _wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
def test_a_disconnected_stream_stops_generating(scheduler, tiny_models, rng):
    import httpx

    from raysight.engines import build_engine

    spec = ModelSpec(model=tiny_models["qwen2-vl"], scheduler=scheduler,
                     generation={"max_new_tokens_limit": MAX_TOKENS},
                     preprocess_cache_bytes=0, vision_cache_bytes=0)
    image = noise_image(rng, 32, 32)
    # The precondition that makes the test mean something: left alone, this chat runs to
    # its last token.
    alone = build_engine(spec).run([GenerateRequest.from_prompt(
        "Describe the image.", image, max_new_tokens=MAX_TOKENS)])[0]
    assert alone.finish_reason == "length" and alone.completion_tokens == MAX_TOKENS

    with _serving(spec) as (server, url):
        finished: list = []
        if scheduler == "static":  # observe what each batch produced
            run_batch = server.batcher.run_batch
            server.batcher.run_batch = lambda items: finished.extend(out := run_batch(items)) or out
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", url + "/v1/chat/completions",
                               json=_body(png_bytes(image))) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["choices"][0][
                            "delta"].get("content"):
                        break  # one piece of text arrived: hang up mid-answer
        if scheduler == "continuous":
            scheduled = server.batcher.scheduler
            # Counted as finished a moment before the same step frees its row: wait for both.
            assert _wait_for(lambda: scheduled.finished["cancelled"] == 1
                             and scheduled.stats().running == 0), scheduled.finished
            assert scheduled.stats().kv_tokens == 0
            assert scheduled.steps < MAX_TOKENS
        else:
            assert _wait_for(lambda: bool(finished))
            assert finished[0].finish_reason == "cancelled"
            assert finished[0].completion_tokens < MAX_TOKENS


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
def test_a_cancelled_plain_request_stops_generating(scheduler, tiny_models, rng):
    """What Ray Serve does when a non-streaming client disconnects: it cancels the
    replica's call. The generation stops at its next token instead of running to the end."""
    import asyncio

    from serve_app.deployment import ModelServer

    spec = ModelSpec(model=tiny_models["qwen2-vl"], scheduler=scheduler,
                     generation={"max_new_tokens_limit": MAX_TOKENS},
                     preprocess_cache_bytes=0, vision_cache_bytes=0)
    server = ModelServer(spec, torch_threads=1)
    finished: list = []
    if scheduler == "static":
        run_batch = server.batcher.run_batch
        server.batcher.run_batch = lambda items: finished.extend(out := run_batch(items)) or out

    async def scenario() -> None:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        request = GenerateRequest.from_prompt(
            "Describe the image.", noise_image(rng, 32, 32), max_new_tokens=MAX_TOKENS,
            on_text=lambda _: loop.call_soon_threadsafe(started.set))
        call = asyncio.ensure_future(server.generate(request))
        await asyncio.wait_for(started.wait(), 60)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    try:
        asyncio.run(scenario())
        if scheduler == "continuous":
            scheduled = server.batcher.scheduler
            # The sequence is counted as finished a moment before the same step drops it
            # from the running set (on the model thread): wait for both.
            assert _wait_for(lambda: scheduled.finished["cancelled"] == 1
                             and scheduled.stats().running == 0), scheduled.finished
        else:
            assert _wait_for(lambda: bool(finished))
            assert finished[0].finish_reason == "cancelled"
            assert finished[0].completion_tokens < MAX_TOKENS
    finally:
        server.batcher.close()
