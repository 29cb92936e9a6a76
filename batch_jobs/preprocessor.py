"""An engine that can only preprocess: the processor and the configs, no weights.

The CPU stage runs `engine.preprocess` and nothing else, so loading the weights there would
cost each CPU actor the model's memory for nothing. This builds the same engine class around
a stand-in that has the model's configs but no parameters; its `preprocess` is the engine's
own code, so a row is prepared exactly as the online path prepares it.
(A candidate for `raysight.engines.build_preprocessor`; it only uses the core's public parts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raysight.engines.base import Engine
from raysight.spec import ModelSpec


@dataclass(frozen=True)
class WeightlessModel:
    """What an engine reads from a model when it is built: the configs, never the weights."""

    config: Any
    generation_config: Any

    def __getattr__(self, name: str):
        raise AttributeError(
            f"{name!r}: this engine was built without weights and can only preprocess"
        )


def build_preprocessor(spec: ModelSpec) -> Engine:
    """The engine for `spec` with its processor but without its weights."""
    from transformers import AutoConfig, GenerationConfig

    from raysight.engines import engine_for
    from raysight.families import family_for
    from raysight.loading import LoadedModel, read_model_type, resolve_source

    source = resolve_source(spec)
    model_type = read_model_type(source, spec)
    family = family_for(model_type, spec.task, spec.family)
    task = family.task
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(source, **common)
    try:
        generation_config = GenerationConfig.from_pretrained(source, **common)
    except OSError:  # no generation_config.json: the model's config says it all
        generation_config = GenerationConfig.from_model_config(config)
    loaded = LoadedModel(
        spec=spec,
        model=WeightlessModel(config, generation_config),
        processor=family.load_processor(source, **common),
        family=family,
        task=task,
        model_type=model_type,
        device="cpu",
        dtype=None,
    )
    return engine_for(loaded)
