"""Sampling limits have one authority (raysight.sampling): the HTTP body, the ModelSpec's
defaults and the generate engine accept and refuse the same values, with clear messages."""

from __future__ import annotations

import pytest

from raysight.engines import build_engine
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.errors import ConfigError, InvalidRequest
from raysight.sampling import MAX_TEMPERATURE, resolve_sampling
from raysight.spec import GenerationDefaults, ModelSpec
from serve_app.openai_api import ChatCompletionRequest, parse
from tests.conftest import noise_image

CHAT = [{"role": "user", "content": "hi"}]
# (field, value, what the refusal says) for values every layer refuses.
REFUSED = [
    ("temperature", -0.1, "greater than or equal to 0"),
    ("temperature", MAX_TEMPERATURE + 0.5, "less than or equal to 2"),
    ("top_p", 0.0, "greater than 0"),
    ("top_p", 1.5, "less than or equal to 1"),
]


@pytest.fixture(scope="module")
def engine(tiny_models):
    return build_engine(ModelSpec(model=tiny_models["llava"]))


@pytest.mark.parametrize("field, value, says", REFUSED)
def test_every_layer_refuses_the_same_values(engine, rng, field, value, says):
    with pytest.raises(InvalidRequest, match=f"{field}: Input should be {says}"):
        parse(ChatCompletionRequest, {"messages": CHAT, field: value})
    with pytest.raises(ConfigError, match=f"generation.{field}: Input should be {says}"):
        ModelSpec.from_mapping({"model": "m", "generation": {field: value}})
    request = GenerateRequest.from_prompt("hi", noise_image(rng, 32, 32), **{field: value})
    [result] = engine.run([request])
    assert isinstance(result, InvalidRequest) and f"{field}: Input should be {says}" in str(result)


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("temperature", MAX_TEMPERATURE),
                                          ("top_p", 1.0), ("top_p", 0.05)])
def test_every_layer_accepts_the_edges(engine, rng, field, value):
    body = parse(ChatCompletionRequest, {"messages": CHAT, field: value})
    assert getattr(body.to_generate_request(), field) == value
    assert getattr(GenerationDefaults(**{field: value}), field) == value
    request = GenerateRequest.from_prompt("hi", noise_image(rng, 32, 32), max_new_tokens=2,
                                          **{field: value})
    assert isinstance(engine.run([request])[0], GenerateResult)


def test_token_limits_are_checked_with_the_defaults_filled_in():
    defaults = GenerationDefaults(max_new_tokens=16, max_new_tokens_limit=32, temperature=0.5)
    sampling = resolve_sampling(defaults, top_p=0.9)
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p) == (16, 0.5, 0.9)
    assert not sampling.greedy
    with pytest.raises(InvalidRequest, match="over this model's limit of 32"):
        resolve_sampling(defaults, max_new_tokens=33)
    with pytest.raises(InvalidRequest, match="min_new_tokens must not be above max_new_tokens"):
        resolve_sampling(defaults, max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(InvalidRequest, match="max_new_tokens: Input should be greater than"):
        resolve_sampling(defaults, max_new_tokens=0)


def test_a_vanishing_top_p_keeps_the_top_token():
    """top_p=1e-300 is 0 in float32; the draw must still be the top token, not an error."""
    import torch

    from raysight.sampling import choose_token

    logits = torch.tensor([0.1, 3.0, 0.2, -1.0])
    assert choose_token(logits, 1.0, 1e-300, torch.Generator().manual_seed(0)) == 1
