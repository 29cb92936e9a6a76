"""Caches never change an answer, stay within their byte bounds and count what they do.

Every comparison is against an engine with the caches turned off, on tiny random models of
the real architectures (fp32, greedy): the same tokens, the same vectors.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysight.caching import ByteLRU, CachingImageProcessor
from raysight.engines import build_engine
from raysight.engines.embed import Classification, EmbedRequest, Embedding
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.spec import ModelSpec
from tests.conftest import noise_image, png_bytes

VISION_CACHED = ("qwen2-vl", "qwen2.5-vl", "llava")
OFF = {"preprocess_cache_bytes": 0, "vision_cache_bytes": 0}
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def engines(tiny_models):
    """(architecture, ModelSpec settings) -> engine, each built once per module."""
    built: dict = {}

    def get(arch: str, **settings):
        key = (arch, tuple(sorted(settings.items())))
        if key not in built:
            built[key] = build_engine(ModelSpec(model=tiny_models[arch], **settings))
        return built[key]

    return get


def chat(image, prompt: str = "Describe the image.", **kwargs) -> GenerateRequest:
    kwargs.setdefault("max_new_tokens", NEW_TOKENS)
    kwargs.setdefault("min_new_tokens", kwargs["max_new_tokens"])
    return GenerateRequest.from_prompt(prompt, image, **kwargs)


def tokens(results) -> list[list[int]]:
    assert all(isinstance(r, GenerateResult) for r in results), results
    return [r.token_ids for r in results]


# --- the LRU itself --------------------------------------------------------------------------


def test_byte_lru_evicts_the_least_recently_used_and_counts():
    cache = ByteLRU(3 * 1256)  # three entries of 1000 bytes (+256 per entry of overhead)
    for key in "abc":
        assert cache.put(key, key.upper(), 1000)
    assert cache.get("a") == "A"  # a is now the most recently used: b goes first
    cache.put("d", "D", 1000)
    assert cache.get("b") is None and cache.get("c") == "C" and cache.get("d") == "D"
    assert not cache.put("huge", "!", 10_000)  # larger than the whole cache: not stored
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.entries) == (3, 1, 1, 3)
    assert stats.bytes == cache.nbytes <= cache.max_bytes
    assert stats.hit_rate == pytest.approx(0.75)


# --- preprocess cache --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2-vl", "llava", "blip"])
def test_processed_images_are_the_same_from_the_cache(engines, rng, arch):
    cached, plain = engines(arch), engines(arch, **OFF)
    assert isinstance(cached.processor.image_processor, CachingImageProcessor)
    assert not isinstance(plain.processor.image_processor, CachingImageProcessor)
    image = noise_image(rng, 48, 40)
    before = cached.cache_stats()["preprocess"]
    first = cached.preprocess(chat(image, "a photo of"))
    again = cached.preprocess(chat(image.copy(), "a photo of"))  # equal pixels, another object
    expected = plain.preprocess(chat(image, "a photo of"))
    after = cached.cache_stats()["preprocess"]
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    for prepared in (first, again):
        assert set(prepared.inputs.tensors) == set(expected.inputs.tensors)
        for key, value in expected.inputs.tensors.items():
            assert torch.equal(prepared.inputs.tensors[key], value), key


def test_processor_settings_are_part_of_the_key(engines, rng):
    processor = engines("qwen2-vl").processor.image_processor
    image = noise_image(rng, 64, 64)
    # Were the settings not in the key, the second call would get the first one's tensors.
    small = processor([image], return_tensors="pt",
                      size={"shortest_edge": 16, "longest_edge": 32 * 32})
    large = processor([image], return_tensors="pt")
    assert small["image_grid_thw"].tolist() != large["image_grid_thw"].tolist()


# --- vision-feature cache ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", VISION_CACHED)
def test_cached_image_features_give_the_same_tokens(engines, rng, arch):
    """A batch mixing cache hits, misses and an image repeated within the batch answers as
    the engine without caches does."""
    cached, plain = engines(arch), engines(arch, **OFF)
    assert cached.image_features is not None and plain.image_features is None
    sizes = [(32, 32), (48, 32), (40, 56), (33, 47)]
    seen, other, new, newer = (noise_image(rng, *size) for size in sizes)
    cached.run([chat(seen, "hi"), chat(other)])  # warms the cache with two images
    before = cached.cache_stats()["vision"]
    two_images = GenerateRequest(messages=[{"role": "user", "content": [
        {"type": "image", "image": newer}, {"type": "text", "text": "and"},
        {"type": "image", "image": seen}, {"type": "text", "text": "compare them"},
    ]}], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    requests = [
        chat(seen, "What color is the shape?"),  # hit, new prompt
        chat(new, "hi"),  # miss
        chat(other, "What shape is this? Answer with one word."),  # hit
        chat(new, "Describe the image."),  # the same miss again, in the same batch
        two_images,  # a miss and a hit in one chat
    ]
    with_cache = tokens(cached.run(requests))
    without = tokens(plain.run(requests))
    after = cached.cache_stats()["vision"]
    assert with_cache == without
    assert after.misses - before.misses == 2  # new and newer: each encoded once
    assert after.hits - before.hits == 4
    assert len({tuple(row) for row in with_cache}) > 1  # the test can fail
    # The answers from warm features equal the first answers too.
    assert tokens(cached.run(requests)) == without


def test_clip_vectors_are_the_same_from_the_cache(engines, rng):
    cached, plain = engines("clip"), engines("clip", **OFF)
    seen, new = noise_image(rng, 32, 32), noise_image(rng, 70, 50)
    warm = cached.run([EmbedRequest(image=seen)])[0].vector
    requests = [
        EmbedRequest(image=seen),
        EmbedRequest(text="a red circle"),
        EmbedRequest(image=new, labels=["a red circle", "a cat"]),
        EmbedRequest(image=new),
    ]
    before = cached.cache_stats()["vision"]
    with_cache, without = cached.run(requests), plain.run(requests)
    after = cached.cache_stats()["vision"]
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 1)
    assert np.array_equal(with_cache[0].vector, warm)  # a hit is the stored vector itself
    for got, expected in zip(with_cache, without):
        if isinstance(expected, Embedding):
            assert float(np.abs(got.vector - expected.vector).max()) < 1e-5
        else:
            assert isinstance(got, Classification)
            assert np.allclose(got.probs, expected.probs, atol=1e-5)


class _DigestCalls:
    """Counts calls of raysight.images.image_digest (the hash over every pixel)."""

    def __init__(self, monkeypatch):
        import raysight.images

        self.calls = 0
        self.digest = raysight.images.image_digest
        monkeypatch.setattr(raysight.images, "image_digest", self)

    def __call__(self, image):
        self.calls += 1
        return self.digest(image)


@pytest.mark.parametrize("arch", ["qwen2-vl", "llava"])
def test_each_image_is_hashed_once_per_chat(engines, rng, arch, monkeypatch):
    """With every cache on (preprocess, vision and response), each image of a request is
    hashed once: the preprocess cache is handed the key the engine computed."""
    # Its own engine (a distinct cache size): the response-cache test counts from zero.
    engine = engines(arch, response_cache=True, response_cache_bytes=1 << 20)
    chat_turns = [{"role": "user", "content": [
        {"type": "image", "image": noise_image(rng, 32, 32)},
        {"type": "text", "text": "Compare"},
        {"type": "image", "image": noise_image(rng, 40, 48)},
    ]}]
    counter = _DigestCalls(monkeypatch)
    result = engine.run([GenerateRequest(messages=chat_turns, max_new_tokens=3)])[0]
    assert isinstance(result, GenerateResult)
    assert counter.calls == 2
    stats = engine.cache_stats()
    assert stats["preprocess"].misses >= 2 and stats["response"].misses >= 1


def test_each_image_is_hashed_once_per_embed_request(engines, rng, monkeypatch):
    engine = engines("clip")
    counter = _DigestCalls(monkeypatch)
    results = engine.run([EmbedRequest(image=noise_image(rng, 32, 32)),
                          EmbedRequest(image=noise_image(rng, 40, 40), labels=["a", "b"])])
    assert isinstance(results[0], Embedding) and isinstance(results[1], Classification)
    assert counter.calls == 2


@pytest.mark.parametrize("arch", ["qwen2-vl", "clip"])
def test_caches_stay_within_their_byte_bound_over_a_long_run(tiny_models, rng, arch):
    """Many distinct images through small caches: bytes never pass the bound, entries are
    evicted (and counted), and answers stay right after their features were evicted."""
    bounds = {"preprocess_cache_bytes": 60_000, "vision_cache_bytes": 4_000}
    engine = build_engine(ModelSpec(model=tiny_models[arch], **bounds))
    plain = build_engine(ModelSpec(model=tiny_models[arch], **OFF))
    first = noise_image(rng, 32, 32)
    images = [first] + [noise_image(rng, 32, 32) for _ in range(39)] + [first]

    def request(image):
        return EmbedRequest(image=image) if arch == "clip" else chat(image, "hi", max_new_tokens=1)

    for start in range(0, len(images), 3):
        engine.run([request(image) for image in images[start : start + 3]])
        for name, stats in engine.cache_stats().items():
            assert stats.bytes <= stats.max_bytes, (name, stats)
            assert stats.bytes == getattr(engine.caches, name).nbytes
    stats = engine.cache_stats()
    for name in ("preprocess", "vision"):
        assert stats[name].evictions > 0 and stats[name].entries > 1, (name, stats[name])
        assert stats[name].misses == len(images)  # the first image was evicted before it came back
    last, expected = engine.run([request(first)])[0], plain.run([request(first)])[0]
    if arch == "clip":
        assert float(np.abs(last.vector - expected.vector).max()) < 1e-5
    else:
        assert last.token_ids == expected.token_ids


# --- response cache ----------------------------------------------------------------------------


def test_response_cache_is_off_by_default(engines):
    assert "response" not in engines("qwen2-vl").cache_stats()
    assert ModelSpec(model="m").response_cache is False


def test_response_cache_answers_repeated_greedy_requests_only(engines, rng):
    engine, plain = engines("qwen2-vl", response_cache=True), engines("qwen2-vl", **OFF)
    image = noise_image(rng, 40, 40)
    greedy = chat(image, "hi", max_new_tokens=8)
    first = engine.run([greedy])[0]
    streamed: list[str] = []
    again = engine.run([chat(image.copy(), "hi", max_new_tokens=8, on_text=streamed.append)])[0]
    stats = engine.cache_stats()["response"]
    assert (stats.hits, stats.misses) == (1, 1)
    assert again.token_ids == first.token_ids == plain.run([greedy])[0].token_ids
    assert "".join(streamed).strip() == again.text  # a cached answer still streams
    # Another limit, prompt or image is another request.
    other_image = noise_image(rng, 40, 40)
    engine.run([chat(image, "hi", max_new_tokens=7), chat(image, "hello", max_new_tokens=8),
                chat(other_image, "hi", max_new_tokens=8)])
    assert engine.cache_stats()["response"].hits == 1

    hot = chat(image, "hi", max_new_tokens=8, temperature=2.0, top_p=1.0)
    assert engine.preprocess(hot).response_key is None
    draws = {tuple(engine.run([hot])[0].token_ids) for _ in range(3)}
    assert len(draws) > 1  # sampled every time, never the stored greedy answer
    stats = engine.cache_stats()["response"]
    assert (stats.hits, stats.misses, stats.entries) == (1, 4, 4)


# --- offline: one model actor encodes each distinct image once ---------------------------------


def test_duplicate_images_in_a_dataset_are_encoded_once_per_actor(tiny_models, rng, tmp_path):
    from batch_jobs.config import job_config_for
    from batch_jobs.stages import ModelStage, PreprocessStage

    distinct = [png_bytes(noise_image(rng, 32, 32)) for _ in range(4)]
    rows = [distinct[i % 4] for i in range(8)]  # half the rows repeat an image
    table = pa.table({"id": [str(i) for i in range(8)], "image": rows})
    job = job_config_for("caption", tiny_models["qwen2-vl"], str(tmp_path), None,
                         prompt="Describe the image.", max_new_tokens=3)
    preprocess, model = PreprocessStage(job), ModelStage(job)
    out = pa.concat_tables([model(preprocess(table.slice(start, 3))) for start in (0, 3, 6)])
    vision = model.engine.cache_stats()["vision"]
    processed = preprocess.engine.cache_stats()["preprocess"]
    assert (vision.misses, vision.hits) == (4, 4)
    assert (processed.misses, processed.hits) == (4, 4)
    texts = out["text"].to_pylist()
    assert texts[:4] == texts[4:]
    plain = build_engine(ModelSpec(model=tiny_models["qwen2-vl"], **OFF))
    alone = plain.run([chat(image, "Describe the image.", max_new_tokens=3, min_new_tokens=0)
                       for image in distinct])
    assert texts[:4] == [result.text for result in alone]


# --- metrics -----------------------------------------------------------------------------------


def test_the_model_server_sends_cache_counters_to_metrics(engines, rng):
    from serve_app.deployment import ModelServer

    engine = engines("qwen2-vl", response_cache=True)
    server = ModelServer(ModelSpec(model="tiny", response_cache=True), engine=engine)
    sent: list[tuple[str, str, float]] = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def inc(self, value, tags):
            sent.append((self.name, tags["cache"], value))

        def set(self, value, tags):
            sent.append((self.name, tags["cache"], value))

    for name in ("hits", "misses", "evictions", "bytes"):
        setattr(server.cache_metrics, name, Recorder(name))
    server.record_cache_stats()  # the counts so far: only what changes from here is new
    sent.clear()
    image = noise_image(rng, 36, 36)
    prepared = [engine.preprocess(chat(image, "hi")) for _ in range(2)]
    server._run_batch(prepared[:1])
    server._run_batch(prepared[1:])

    def total(name, cache):
        return sum(value for metric, tag, value in sent if (metric, tag) == (name, cache))

    assert total("misses", "response") == 1 and total("hits", "response") == 1
    assert total("misses", "vision") == 1 and total("hits", "vision") == 0
    assert total("hits", "preprocess") == 1  # the second preprocess of the same image
    assert [v for metric, tag, v in sent if (metric, tag) == ("bytes", "vision")][-1] > 0
