"""Dual encoders beyond CLIP: SigLIP and SigLIP2 (NaFlex) load, embed, classify with a
sigmoid per label, and give each item in a batch the vector it gets alone. Also: an embed
forward never takes more than max_batch_size items. Tiny random models, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysight.engines import build_engine
from raysight.engines.embed import Classification, EmbedRequest, Embedding
from raysight.spec import ModelSpec
from tests.conftest import noise_image

SIGLIPS = ("siglip", "siglip2")
NO_CACHES = dict(preprocess_cache_bytes=0, vision_cache_bytes=0)
# Squares, wide and tall images, and sizes that are not multiples of the patch: SigLIP2 keeps
# each aspect ratio (its patch grids differ), SigLIP resizes all to one square.
IMAGE_SIZES = [(32, 32), (80, 20), (20, 64), (50, 30), (17, 17)]
TEXTS = ["a cat", "a red circle", "a much longer text about a photo of a cat on a mat",
         "hello world"]
LABELS = ["a red circle", "a green square", "a photo of a cat", "hello"]


@pytest.fixture(scope="module")
def engines(tiny_models):
    built: dict = {}

    def get(arch: str, **settings):
        key = (arch, tuple(sorted(settings.items())))
        if key not in built:
            built[key] = build_engine(ModelSpec(model=tiny_models[arch], **NO_CACHES, **settings))
        return built[key]

    return get


@pytest.mark.parametrize("arch", SIGLIPS)
def test_siglip_loads_as_its_own_family(engines, arch):
    engine = engines(arch)
    assert engine.task == "embed" and engine.family.name == arch
    assert type(engine.model).__name__ == {"siglip": "SiglipModel", "siglip2": "Siglip2Model"}[arch]


@pytest.mark.parametrize("arch", SIGLIPS)
def test_siglip_batched_vectors_equal_single_vectors(engines, rng, arch):
    engine = engines(arch)
    requests = [EmbedRequest(image=noise_image(rng, *size)) for size in IMAGE_SIZES]
    requests += [EmbedRequest(text=text) for text in TEXTS]
    batched = engine.run(requests)
    gap = 0.0
    for request, result in zip(requests, batched):
        alone = engine.run([request])[0]
        assert isinstance(result, Embedding) and isinstance(alone, Embedding)
        assert result.vector.shape == (32,) and result.vector.dtype == np.float32
        assert abs(float(np.linalg.norm(result.vector)) - 1.0) < 1e-5
        gap = max(gap, float(np.abs(result.vector - alone.vector).max()))
    print(f"{arch}: max |batched - single| = {gap:.1e}")
    assert gap < 1e-5
    # Different images and texts get different vectors (the test could fail).
    vectors = np.stack([r.vector for r in batched])
    assert len({tuple(np.round(v, 4)) for v in vectors}) == len(requests)


def test_siglip2_images_keep_their_aspect_ratio(engines, rng):
    """NaFlex: a wide image becomes a wide patch grid, padded to the same patch budget."""
    engine = engines("siglip2")
    wide = engine.preprocess(EmbedRequest(image=noise_image(rng, 80, 20))).tensors
    tall = engine.preprocess(EmbedRequest(image=noise_image(rng, 20, 64))).tensors
    assert set(wide) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    rows, cols = wide["spatial_shapes"][0].tolist()
    assert cols > rows and tall["spatial_shapes"][0, 0] > tall["spatial_shapes"][0, 1]
    assert wide["pixel_values"].shape == tall["pixel_values"].shape  # padded to one budget
    assert int(wide["pixel_attention_mask"].sum()) == rows * cols


def _direct_probabilities(folder: str, image, labels: list[str]) -> list[float]:
    """The label probabilities from the model's own forward, with processors loaded afresh
    (not the engine's): sigmoid(logits_per_image)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")
    text = AutoTokenizer.from_pretrained(folder)(
        labels, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model(**dict(pixels), **dict(text))
    return output.logits_per_image.sigmoid()[0].tolist()


@pytest.mark.parametrize("arch", SIGLIPS)
def test_siglip_classifies_with_a_sigmoid_per_label(engines, tiny_models, rng, arch):
    engine = engines(arch)
    image = noise_image(rng, 48, 40)
    result = engine.run([EmbedRequest(image=image, labels=LABELS)])[0]
    assert isinstance(result, Classification) and result.labels == LABELS
    expected = _direct_probabilities(tiny_models[arch], image, LABELS)
    print(f"{arch}: engine {np.round(result.probs, 4)} direct {np.round(expected, 4)}")
    assert np.allclose(result.probs, expected, atol=1e-5)
    assert result.label == LABELS[int(np.argmax(expected))]
    # Each label is scored on its own: a label's probability does not depend on the others.
    alone = engine.run([EmbedRequest(image=image, labels=[LABELS[2]])])[0]
    assert abs(alone.probs[0] - result.probs[2]) < 1e-5
    # A classification in a batch equals the same classification alone.
    batched = engine.run([EmbedRequest(image=noise_image(rng, 30, 60)),
                          EmbedRequest(image=image, labels=LABELS), EmbedRequest(text="a cat")])
    assert np.allclose(batched[1].probs, result.probs, atol=1e-5)


class _ForwardSizes:
    """Wraps one of the model's feature methods and records each call's batch size."""

    def __init__(self, method):
        self.method = method
        self.sizes: list[int] = []

    def __call__(self, *args, **kwargs):
        first = kwargs.get("pixel_values", kwargs.get("input_ids"))
        self.sizes.append(int(first.shape[0]))
        return self.method(*args, **kwargs)


@pytest.mark.parametrize("arch", ("clip", "siglip2"))
def test_embed_forwards_never_exceed_max_batch_size(engines, rng, arch, monkeypatch):
    small = engines(arch, max_batch_size=3)
    large = engines(arch, max_batch_size=32)
    images = [EmbedRequest(image=noise_image(rng, *IMAGE_SIZES[i % 5])) for i in range(7)]
    texts = [EmbedRequest(text=f"{TEXTS[i % 4]} {i}") for i in range(5)]
    requests = [item for pair in zip(images, texts) for item in pair] + images[5:]
    image_calls = _ForwardSizes(small.model.get_image_features)
    text_calls = _ForwardSizes(small.model.get_text_features)
    monkeypatch.setattr(small.model, "get_image_features", image_calls)
    monkeypatch.setattr(small.model, "get_text_features", text_calls)
    chunked = small.run(requests)
    assert image_calls.sizes == [3, 3, 1] and text_calls.sizes == [3, 2]
    whole = large.run(requests)
    for a, b in zip(chunked, whole):
        assert float(np.abs(a.vector - b.vector).max()) < 1e-5
