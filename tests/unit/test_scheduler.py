"""The continuous scheduler gives every request the tokens it gets alone (greedy, fp32),
whatever joins or leaves the running batch around it; it keeps its KV budget, streams, and
drops a request whose client went away. Tiny random models of each real architecture."""

from __future__ import annotations

import threading

import pytest

from raysight.engines import build_engine
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.errors import InvalidRequest
from raysight.scheduler import GenerationScheduler
from raysight.spec import ModelSpec
from tests.conftest import GENERATIVE, noise_image

PROMPTS = [
    "Describe the image.",
    "What shape is this? Answer with one word, please, and be careful about it.",
    "hi",
    "What color is the shape?",
    "Tell me a long story about this photo of a cat",
]
SIZES = [(32, 32), (48, 32), (64, 64), (40, 56), (33, 47)]
# Different lengths, so sequences leave the batch at different steps.
NEW_TOKENS = [7, 3, 9, 1, 5]
# Submitted before these steps: two at once, then one every few steps.
ARRIVE_AT = [0, 0, 2, 3, 6]


@pytest.fixture(scope="module")
def engines(tiny_models):
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            spec = ModelSpec(model=tiny_models[arch], max_batch_size=8,
                             preprocess_cache_bytes=0, vision_cache_bytes=0)
            cache[arch] = build_engine(spec)
        return cache[arch]

    return get


def _requests(rng, **kwargs):
    return [
        GenerateRequest.from_prompt(prompt, noise_image(rng, *size), max_new_tokens=new,
                                    min_new_tokens=new, **kwargs)
        for prompt, size, new in zip(PROMPTS, SIZES, NEW_TOKENS)
    ]


def _scheduler(engine, **kwargs) -> GenerationScheduler:
    options = dict(max_running=8, kv_cache_tokens=100_000, prefill_tokens_per_step=4096)
    options.update(kwargs)
    return GenerationScheduler(engine, **options)


def _run_staggered(engine, scheduler, requests, arrive_at):
    """Submit each request before its step; step until all are answered."""
    results: dict[int, object] = {}
    step = 0
    while len(results) < len(requests):
        for index, (request, at) in enumerate(zip(requests, arrive_at)):
            if at == step:
                scheduler.submit(engine.preprocess(request),
                                 lambda result, i=index: results.__setitem__(i, result))
        scheduler.step()
        step += 1
        assert step < 500, "the scheduler did not finish"
    return [results[i] for i in range(len(requests))]


@pytest.mark.parametrize("arch", GENERATIVE)
def test_staggered_tokens_equal_single_tokens(arch, engines, rng):
    engine = engines(arch)
    requests = _requests(rng)
    scheduler = _scheduler(engine)
    together = _run_staggered(engine, scheduler, requests, ARRIVE_AT)
    alone = [engine.run([request])[0] for request in requests]
    assert all(isinstance(r, GenerateResult) for r in together + alone), together + alone
    for row, (t, a, new) in enumerate(zip(together, alone, NEW_TOKENS)):
        assert len(t.token_ids) == new
        assert t.token_ids == a.token_ids, f"{arch} row {row}: scheduled {t.token_ids} alone {a.token_ids}"
    assert len({tuple(r.token_ids) for r in together}) > 1
    # Everyone left: the batch cache is empty again.
    assert scheduler.stats().running == 0 and scheduler.stats().kv_tokens == 0
