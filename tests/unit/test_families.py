"""Model families own their differences: engines ask the family (stop tokens, image inputs,
inputs), an architecture no family lists is refused at load with the families named, and
`family:` opts one in."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from raysight.engines import build_engine
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.errors import ConfigError, UnsupportedModel
from raysight.spec import FamilyName, ModelSpec
from tests.conftest import noise_image

ENGINES = Path(__file__).resolve().parents[2] / "raysight" / "engines"


@pytest.fixture(scope="module")
def vipllava(tmp_path_factory) -> str:
    """A tiny VipLLaVA: a real image-text-to-text architecture raysight does not list."""
    from tests.fixtures.random_models import build_random_model

    return str(build_random_model("vipllava", tmp_path_factory.mktemp("vipllava")))


def test_family_names_are_one_list():
    from raysight.families import FAMILY_NAMES, families

    assert tuple(families()) == FAMILY_NAMES == get_args(FamilyName)
    assert {f.task for f in families().values()} == {"generate", "embed"}


def test_engines_carry_no_family_checks():
    """Differences live in the families: no engine branches on a family's name, and the
    embed engine names no image input of its own."""
    for path in ENGINES.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "family.name" not in source, path.name
    assert "pixel_values" not in (ENGINES / "embed.py").read_text(encoding="utf-8")


def test_stop_tokens_come_from_the_family(tiny_models):
    from raysight.loading import load_model

    blip = load_model(ModelSpec(model=tiny_models["blip"]))
    sep = blip.model.config.text_config.sep_token_id
    assert sep in blip.family.stop_token_ids(blip.model, blip.processor.tokenizer)
    llava = load_model(ModelSpec(model=tiny_models["llava"]))
    tokenizer = llava.processor.tokenizer
    assert llava.family.stop_token_ids(llava.model, tokenizer) == {tokenizer.eos_token_id}
    assert llava.family.pad_token_id(llava.model, tokenizer, frozenset()) == tokenizer.pad_token_id


def test_each_listed_model_type_gets_its_family(tiny_models):
    from raysight.loading import load_model

    expected = {"qwen2-vl": "qwen2-vl", "qwen2.5-vl": "qwen2-vl", "llava": "chat-vlm",
                "blip": "blip", "clip": "clip", "siglip": "siglip", "siglip2": "siglip2"}
    for arch, family in expected.items():
        assert load_model(ModelSpec(model=tiny_models[arch])).family.name == family, arch


def test_an_unlisted_architecture_is_refused_at_load(vipllava):
    from batch_jobs.preprocessor import build_preprocessor
    from raysight.families import FAMILY_NAMES

    for build in (build_engine, build_preprocessor):  # online / offline, before any request
        with pytest.raises(UnsupportedModel) as refused:
            build(ModelSpec(model=vipllava))
        message = str(refused.value)
        assert "'vipllava'" in message and "family:" in message
        assert all(name in message for name in FAMILY_NAMES), message


def test_the_family_override_runs_an_unlisted_architecture(vipllava, rng):
    engine = build_engine(ModelSpec(model=vipllava, family="chat-vlm", max_batch_size=4))
    assert engine.family.name == "chat-vlm" and type(engine.model).__name__.startswith("VipLlava")
    requests = [
        GenerateRequest.from_prompt(prompt, noise_image(rng, *size), max_new_tokens=5,
                                    min_new_tokens=5)
        for prompt, size in [("hi", (32, 32)), ("Describe the image.", (48, 40)),
                             ("What color is the shape?", (40, 64))]
    ]
    batched = engine.run(requests)
    assert all(isinstance(r, GenerateResult) and len(r.token_ids) == 5 for r in batched), batched
    for request, result in zip(requests, batched):
        assert engine.run([request])[0].token_ids == result.token_ids
    assert len({tuple(r.token_ids) for r in batched}) > 1


def test_family_and_task_must_agree(tiny_models, vipllava):
    from raysight.loading import load_model

    with pytest.raises(UnsupportedModel, match="dual encoder"):
        load_model(ModelSpec(model=tiny_models["siglip"], task="generate"))
    with pytest.raises(UnsupportedModel, match="task 'embed' supports"):
        load_model(ModelSpec(model=vipllava, family="chat-vlm", task="embed"))


def test_an_unknown_family_name_is_a_config_error():
    with pytest.raises(ConfigError) as refused:
        ModelSpec.from_mapping({"model": "some/model", "family": "llava"})
    assert "family" in str(refused.value) and "'chat-vlm'" in str(refused.value)
