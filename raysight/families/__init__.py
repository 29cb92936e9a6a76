"""Model families: each architecture's quirks, looked up by the config's `model_type`, or
by name when a ModelSpec sets `family:` for an architecture raysight does not list."""

from __future__ import annotations

from typing import Union

from raysight.errors import ConfigError, UnsupportedModel
from raysight.families.base import EncoderFamily, GenerativeFamily, ModelInputs

__all__ = [
    "EncoderFamily",
    "Family",
    "GenerativeFamily",
    "ModelInputs",
    "FAMILY_NAMES",
    "family_for",
    "families",
]

Family = Union[GenerativeFamily, EncoderFamily]

# The names `family:` accepts, in the order error messages list them. The ModelSpec's field
# repeats them (it must not import transformers); a unit test keeps the two equal.
FAMILY_NAMES = ("chat-vlm", "qwen2-vl", "blip", "clip", "siglip", "siglip2")


def families() -> dict[str, Family]:
    """Every family by name (imports transformers, so only when a model is loaded)."""
    from raysight.families.blip import BlipFamily
    from raysight.families.chat_vlm import ChatVlmFamily
    from raysight.families.clip import ClipFamily, Siglip2Family, SiglipFamily
    from raysight.families.qwen2_vl import Qwen2VLFamily

    known = [ChatVlmFamily(), Qwen2VLFamily(), BlipFamily(), ClipFamily(), SiglipFamily(),
             Siglip2Family()]
    return {family.name: family for family in known}


def _listing(by_name: dict[str, Family]) -> str:
    """'generative: chat-vlm (llava), ...; dual encoders: clip (clip), ...'."""
    def names(task: str) -> str:
        return ", ".join(f"{f.name} ({', '.join(f.model_types)})"
                         for f in by_name.values() if f.task == task)

    return f"generative: {names('generate')}; dual encoders: {names('embed')}"


def family_for(model_type: str, task: str | None = None, name: str | None = None) -> Family:
    """The family that runs a model of `model_type`; its `task` is the engine's.

    `name` (the ModelSpec's `family:`) picks a family outright, for an architecture raysight
    does not list; `task` (the ModelSpec's `task:`) must agree with the family. A model type
    no family lists is refused here, at load, with the families a user may opt into."""
    by_name = families()
    if name is not None:
        if name not in by_name:
            raise ConfigError(f"unknown family {name!r}; known: {', '.join(by_name)}")
        family = by_name[name]
    else:
        by_type = {t: f for f in by_name.values() for t in f.model_types}
        if model_type not in by_type:
            raise UnsupportedModel(
                f"model type {model_type!r} is not an architecture raysight lists. Supported "
                f"families (with their model types) are {_listing(by_name)}. If this model "
                "works like one of them, set `family:` in its ModelSpec (e.g. `family: "
                "chat-vlm` for a chat-template VLM that AutoModelForImageTextToText loads)."
            )
        family = by_type[model_type]
    if task is not None and task != family.task:
        if family.task == "embed":
            raise UnsupportedModel(
                f"model type {model_type!r} is a dual encoder ({family.name} family); "
                "use task 'embed' for it"
            )
        encoders = sorted(t for f in by_name.values() if f.task == "embed" for t in f.model_types)
        raise UnsupportedModel(
            f"task 'embed' supports model types {', '.join(encoders)}; this model is "
            f"{model_type!r} ({family.name} family, task 'generate')"
        )
    return family
