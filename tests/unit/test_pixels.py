"""Pixels as uint8 (raysight/pixels.py): what each family's preprocess hands out, that the
normalisation next to the forward gives the processor's own floats, and that the offline
stages answer what the online engine answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from raysight.engines import build_engine
from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest
from raysight.families import families
from raysight.pixels import PIXELS, install_raw_pixels
from raysight.spec import ModelSpec

from batch_jobs.codec import encode_prepared
from batch_jobs.config import job_config_for
from batch_jobs.preprocessor import build_preprocessor
from batch_jobs.stages import ModelStage, PreprocessStage
from tests.conftest import noise_image, png_bytes

# Every family raysight lists, by the tiny model of its architecture.
FAMILIES = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip2", "blip": "blip",
            "llava": "chat-vlm", "qwen2-vl": "qwen2-vl"}


def _request(arch: str, image):
    if families()[FAMILIES[arch]].task == "embed":
        return EmbedRequest(image=image)
    return GenerateRequest.from_prompt("describe", image, max_new_tokens=4)


def _pixels(prepared):
    tensors = prepared.tensors if hasattr(prepared, "tensors") else prepared.inputs.tensors
    return tensors[PIXELS]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_family_prepares_uint8_that_normalise_to_the_processors_floats(tiny_models, rng,
                                                                             arch):
    engine = build_preprocessor(ModelSpec(model=tiny_models[arch]))
    stock = families()[FAMILIES[arch]].load_processor(tiny_models[arch]).image_processor
    assert engine.pixels is not None, f"{arch}: pixels stay float32"
    for width, height in [(48, 40), (97, 61), (200, 300)]:
        image = noise_image(rng, width, height)
        assert _pixels(engine.preprocess(_request(arch, png_bytes(image)))).dtype == torch.uint8
        raw = engine.processor.image_processor(images=[image], return_tensors="pt")
        expected = stock(images=[image], return_tensors="pt")
        restored = engine.pixels.restore(dict(raw))
        assert raw[PIXELS].dtype == torch.uint8
        # Bit for bit: the same float64 rescale and float32 normalisation as the processor.
        assert torch.equal(restored[PIXELS], expected[PIXELS]), (arch, width, height)
        for key in expected:
            assert torch.equal(torch.as_tensor(restored[key]), torch.as_tensor(expected[key]))


def test_a_prepared_image_crosses_in_a_quarter_of_the_bytes(tiny_models, rng):
    engine = build_preprocessor(ModelSpec(model=tiny_models["clip"]))
    prepared = engine.preprocess(EmbedRequest(image=png_bytes(noise_image(rng, 64, 64))))
    as_float = type(prepared)(prepared.kind, engine.pixels.restore(prepared.tensors))
    uint8_bytes, float_bytes = len(encode_prepared(prepared)), len(encode_prepared(as_float))
    pixels = _pixels(prepared).numel()
    assert float_bytes - uint8_bytes >= 2.9 * pixels  # 1 byte a value instead of 4
    assert uint8_bytes < 0.4 * float_bytes


class _SmoothingProcessor:
    """An image processor whose output is not whole numbers before it rescales (a blur after
    the resize, say): its normalisation cannot be split off."""

    do_rescale, do_normalize = True, True
    rescale_factor, image_mean, image_std = 1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __call__(self, images, return_tensors="pt", do_rescale=True, do_normalize=True):
        pixels = torch.tensor(np.asarray(images[0], dtype=np.float32)).permute(2, 0, 1)[None]
        pixels = pixels * 0.7 + 0.3
        if do_rescale:
            pixels = pixels / 255
        if do_normalize:
            pixels = (pixels - 0.5) / 0.5
        return {PIXELS: pixels}


class _Processor:
    def __init__(self):
        self.image_processor = _SmoothingProcessor()


def test_a_processor_that_cannot_be_split_keeps_float_pixels():
    processor = _Processor()
    assert install_raw_pixels(processor, "channels_first") is None
    assert isinstance(processor.image_processor, _SmoothingProcessor)  # left as it was
    out = processor.image_processor(images=[Image.new("RGB", (8, 8), (10, 20, 30))])
    assert out[PIXELS].dtype == torch.float32


def _stage_rows(job, images: list[bytes]) -> list[dict]:
    table = pa.table({"path": [f"{i}.png" for i in range(len(images))], "image": images})
    return ModelStage(job)(PreprocessStage(job)(table)).to_pylist()


@pytest.mark.parametrize("arch", ["clip", "siglip2"])
def test_offline_vectors_equal_the_online_engine(tiny_models, rng, tmp_path, arch):
    images = [png_bytes(noise_image(rng, 40 + 9 * i, 50)) for i in range(5)]
    job = job_config_for("embed", tiny_models[arch], str(tmp_path), batch_size=4)
    offline = _stage_rows(job, images)
    online = build_engine(ModelSpec(model=tiny_models[arch])).run(
        [EmbedRequest(image=image) for image in images])
    for row, answer in zip(offline, online):
        assert row["error"] is None
        np.testing.assert_allclose(np.asarray(row["embedding"]), answer.vector, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2-vl", "blip"])
def test_offline_greedy_captions_equal_the_online_engine(tiny_models, rng, tmp_path, arch):
    images = [png_bytes(noise_image(rng, 32 + 7 * i, 40)) for i in range(4)]
    job = job_config_for("caption", tiny_models[arch], str(tmp_path), prompt="describe",
                         max_new_tokens=6)
    offline = _stage_rows(job, images)
    online = build_engine(ModelSpec(model=tiny_models[arch])).run(
        [GenerateRequest.from_prompt("describe", image, max_new_tokens=6) for image in images])
    assert [row["text"] for row in offline] == [answer.text for answer in online]
    assert all(row["error"] is None for row in offline)
