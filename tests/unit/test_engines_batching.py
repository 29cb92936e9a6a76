"""Batching never changes an answer: each item in a batch gets exactly the tokens (or the
vector) it gets alone. Tiny random models of each real architecture, fp32, greedy."""

from __future__ import annotations

import numpy as np
import pytest

from raysight.engines import build_engine
from raysight.engines.embed import Classification, EmbedRequest, Embedding
from raysight.engines.generate import GenerateRequest, GenerateResult
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
NEW_TOKENS = 6
# Every run encodes its images afresh: a cached feature would make "alone" reuse "batched".
NO_CACHES = dict(preprocess_cache_bytes=0, vision_cache_bytes=0)


@pytest.fixture(scope="module")
def engines(tiny_models):
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            spec = ModelSpec(model=tiny_models[arch], max_batch_size=8, **NO_CACHES)
            cache[arch] = build_engine(spec)
        return cache[arch]

    return get


def _requests(rng):
    return [
        GenerateRequest.from_prompt(
            prompt, noise_image(rng, *size), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
        )
        for prompt, size in zip(PROMPTS, SIZES)
    ]


@pytest.mark.parametrize("arch", GENERATIVE)
def test_batched_tokens_equal_single_tokens(arch, engines, rng):
    engine = engines(arch)
    requests = _requests(rng)
    batched = engine.run(requests)
    alone = [engine.run([request])[0] for request in requests]
    assert all(isinstance(r, GenerateResult) for r in batched + alone), batched + alone
    for row, (b, a) in enumerate(zip(batched, alone)):
        assert len(b.token_ids) == NEW_TOKENS
        assert b.token_ids == a.token_ids, f"{arch} row {row}: batch {b.token_ids} alone {a.token_ids}"
    # The test can fail: the random models answer differently for different inputs.
    assert len({tuple(r.token_ids) for r in batched}) > 1


@pytest.mark.parametrize("arch", GENERATIVE)
def test_batched_logits_match_single_logits(arch, engines, rng):
    """The first step's logits of a left-padded batch equal each item's alone (fp32), for
    every group of items the engine would batch together."""
    import torch

    engine = engines(arch)
    prepared = [engine.preprocess(r) for r in _requests(rng)]

    def first_logits(items):
        batch = engine.family.collate([i.inputs for i in items], engine.pad_token_id)
        with torch.inference_mode():
            out = engine.model.generate(
                **batch, max_new_tokens=1, do_sample=False, output_logits=True,
                return_dict_in_generate=True, **engine.family.generate_kwargs(engine.pad_token_id),
            )
        return out.logits[0]

    groups: dict = {}
    for item in prepared:
        groups.setdefault(item.group, []).append(item)
    assert max(len(group) for group in groups.values()) > 1, "nothing was batched"
    gap = 0.0
    for group in groups.values():
        batched = first_logits(group)
        gap = max([gap] + [float((batched[row] - first_logits([item])[0]).abs().max())
                           for row, item in enumerate(group)])
    print(f"{arch}: max logit gap batch vs single = {gap:.2e} ({len(groups)} batch group(s))")
    assert gap < 1e-4


def test_chat_with_several_images_and_turns(engines, rng):
    engine = engines("qwen2-vl")
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "image", "image": noise_image(rng, 32, 32)},
            {"type": "text", "text": "What is in the first image?"},
        ]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": [
            {"type": "image", "image": noise_image(rng, 48, 48)},
            {"type": "text", "text": "And in this one?"},
        ]},
    ]
    request = GenerateRequest(messages=chat, max_new_tokens=4, min_new_tokens=4)
    single = GenerateRequest.from_prompt("hi", noise_image(rng, 32, 32), max_new_tokens=4, min_new_tokens=4)
    batched = engine.run([request, single])
    assert batched[0].token_ids == engine.run([request])[0].token_ids
    assert batched[1].token_ids == engine.run([single])[0].token_ids
    # Two images of 32x32 and 48x48: 4 + 9 image tokens in the prompt.
    assert batched[0].prompt_tokens > batched[1].prompt_tokens


def test_per_item_max_new_tokens_in_one_batch(engines, rng):
    engine = engines("llava")
    image = noise_image(rng, 32, 32)
    short = GenerateRequest.from_prompt("hi", image, max_new_tokens=2, min_new_tokens=2)
    long = GenerateRequest.from_prompt("hi", image, max_new_tokens=7, min_new_tokens=7)
    out_short, out_long = engine.run([short, long])
    assert len(out_short.token_ids) == 2 and out_short.finish_reason == "length"
    assert len(out_long.token_ids) == 7
    assert out_long.token_ids[:2] == out_short.token_ids


def test_sampling_settings_are_honoured(engines, rng):
    engine = engines("qwen2-vl")
    image = noise_image(rng, 32, 32)
    greedy = GenerateRequest.from_prompt("hi", image, max_new_tokens=8, min_new_tokens=8)
    hot = GenerateRequest.from_prompt(
        "hi", image, max_new_tokens=8, min_new_tokens=8, temperature=2.0, top_p=1.0
    )
    greedy_runs = {tuple(engine.run([greedy])[0].token_ids) for _ in range(3)}
    hot_runs = {tuple(r.token_ids) for r in engine.run([hot, hot, hot, greedy])[:3]}
    assert len(greedy_runs) == 1
    assert len(hot_runs) > 1  # three draws at temperature 2 (the most allowed) differ


def test_streaming_pieces_add_up_to_the_answer(engines, rng):
    engine = engines("llava")
    pieces: list[str] = []
    request = GenerateRequest.from_prompt(
        "hi", noise_image(rng, 32, 32), max_new_tokens=6, min_new_tokens=6, on_text=pieces.append
    )
    plain = GenerateRequest.from_prompt("hi", noise_image(rng, 40, 40), max_new_tokens=6)
    streamed, _ = engine.run([request, plain])
    assert pieces, "on_text was never called"
    assert "".join(pieces).strip() == streamed.text


def test_one_bad_item_fails_alone(engines, rng):
    engine = engines("blip")
    good = GenerateRequest.from_prompt("a photo of", noise_image(rng, 32, 32), max_new_tokens=3)
    two_images = GenerateRequest(messages=[{"role": "user", "content": [
        {"type": "image", "image": noise_image(rng, 32, 32)},
        {"type": "image", "image": noise_image(rng, 32, 32)},
        {"type": "text", "text": "compare"},
    ]}])
    results = engine.run([good, two_images, good])
    assert isinstance(results[0], GenerateResult) and isinstance(results[2], GenerateResult)
    assert "blip models take at most 1 per request" in str(results[1])


def test_clip_batched_vectors_equal_single_vectors(tiny_models, rng):
    engine = build_engine(ModelSpec(model=tiny_models["clip"], **NO_CACHES))
    requests = [
        EmbedRequest(image=noise_image(rng, 32, 32)),
        EmbedRequest(text="a red circle"),
        EmbedRequest(text="a much longer text about a photo of a cat"),
        EmbedRequest(image=noise_image(rng, 70, 50)),
        EmbedRequest(image=noise_image(rng, 40, 40), labels=["a red circle", "a cat", "hello"]),
    ]
    batched = engine.run(requests)
    for request, result in zip(requests, batched):
        alone = engine.run([request])[0]
        if isinstance(result, Embedding):
            assert result.vector.shape == (32,)
            assert abs(float(np.linalg.norm(result.vector)) - 1.0) < 1e-5
            assert float(np.abs(result.vector - alone.vector).max()) < 1e-5
        else:
            assert isinstance(result, Classification)
            assert result.labels == ["a red circle", "a cat", "hello"]
            assert abs(sum(result.probs) - 1.0) < 1e-5
            assert np.allclose(result.probs, alone.probs, atol=1e-5)
    assert float(np.abs(batched[0].vector - batched[3].vector).max()) > 1e-3
