"""Model families: each architecture's quirks, looked up by the config's `model_type`."""

from __future__ import annotations

from raysight.errors import UnsupportedModel
from raysight.families.base import EncoderFamily, GenerativeFamily, ModelInputs

__all__ = [
    "EncoderFamily",
    "GenerativeFamily",
    "ModelInputs",
    "encoder_family_for",
    "generative_family_for",
    "task_for_model_type",
]


def _generative_families() -> dict[str, GenerativeFamily]:
    from raysight.families.blip import BlipFamily
    from raysight.families.qwen2_vl import Qwen2VLFamily

    families: dict[str, GenerativeFamily] = {}
    for family in (Qwen2VLFamily(), BlipFamily()):
        for model_type in family.model_types:
            families[model_type] = family
    return families


def _encoder_families() -> dict[str, EncoderFamily]:
    from raysight.families.clip import ClipFamily, SiglipFamily

    families: dict[str, EncoderFamily] = {}
    for family in (ClipFamily(), SiglipFamily()):
        for model_type in family.model_types:
            families[model_type] = family
    return families


def task_for_model_type(model_type: str) -> str:
    """'embed' for known dual encoders, 'generate' for everything else."""
    return "embed" if model_type in _encoder_families() else "generate"


def generative_family_for(model_type: str) -> GenerativeFamily:
    """The family for a generative model; chat-template VLMs (LLaVA, ...) use the default."""
    if model_type in _encoder_families():
        raise UnsupportedModel(
            f"model type {model_type!r} is a dual encoder; use task 'embed' for it"
        )
    return _generative_families().get(model_type, GenerativeFamily())


def encoder_family_for(model_type: str) -> EncoderFamily:
    families = _encoder_families()
    if model_type not in families:
        known = ", ".join(sorted(families))
        raise UnsupportedModel(
            f"task 'embed' supports model types {known}; this model is {model_type!r}"
        )
    return families[model_type]
