"""Where a replica prepares its requests (serve_app.deployment.PreparePool): with a batcher
that runs whole batches, on one thread per core at the lowest CPU priority, so that on a CPU
the preparing yields to the forward; the continuous scheduler prepares at the usual priority,
so a request is ready for its next admission. Real engines (the built-in CLIP, a tiny random
Qwen2-VL), no Ray; the threads' priorities are read back from the kernel."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest
from raysight.spec import ModelSpec
from tests.conftest import noise_image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="a thread's own CPU priority is Linux's")


def _record_priorities(server) -> list[tuple[int, int]]:
    """(thread id, nice) of every thread that prepares a request from now on."""
    seen: list[tuple[int, int]] = []
    prepare = server.engine.preprocess_safely

    def recording(request):
        thread = threading.get_native_id()
        seen.append((thread, os.getpriority(os.PRIO_PROCESS, thread)))
        return prepare(request)

    server.engine.preprocess_safely = recording
    return seen


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_embeddings_are_prepared_at_the_lowest_priority_and_still_answered(rng):
    from serve_app.deployment import ModelServer, PreparePool

    server = ModelServer(ModelSpec(model="builtin:shapes-clip", preprocess_cache_bytes=0))
    try:
        seen = _record_priorities(server)
        images = [noise_image(rng, 48, 48) for _ in range(6)]
        before = _own_priority()
        served = asyncio.run(server.embed([EmbedRequest(image=image) for image in images]))
        assert [s.error for s in served] == [None] * 6
        assert len(seen) == 6
        assert {nice for _, nice in seen} == {PreparePool.NICE}
        assert server.prepare_pool._max_workers == os.cpu_count()
        # Only the pool's threads were lowered: the caller's thread (the event loop's) was not.
        assert _own_priority() == before
        assert all(thread != threading.get_native_id() for thread, _ in seen)
        # Each answer is the model's own for that image, whatever thread prepared it.
        alone = server.engine.run([EmbedRequest(image=images[3])])[0]
        assert served[3].result.vector == pytest.approx(alone.vector, abs=1e-5)
    finally:
        server.batcher.close()


def test_the_continuous_scheduler_prepares_at_the_usual_priority(tiny_models, rng):
    from serve_app.deployment import ModelServer

    server = ModelServer(ModelSpec(model=tiny_models["qwen2-vl"], scheduler="continuous",
                                   preprocess_cache_bytes=0, vision_cache_bytes=0),
                         torch_threads=1)
    try:
        assert server.prepare_pool is None
        seen = _record_priorities(server)
        request = GenerateRequest.from_prompt("Describe the image.", noise_image(rng, 32, 32),
                                              max_new_tokens=2)
        served = asyncio.run(server.generate(request))
        assert served.error is None and served.result.completion_tokens >= 1
        assert [nice for _, nice in seen] == [_own_priority()]
    finally:
        server.batcher.close()
