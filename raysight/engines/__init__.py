"""Engines by task. `build_engine(spec)` loads the model and returns the right engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysight.errors import ConfigError

if TYPE_CHECKING:
    from raysight.engines.base import Engine
    from raysight.spec import ModelSpec


def _engine_classes() -> dict[str, type]:
    from raysight.engines.embed import EmbedEngine
    from raysight.engines.generate import GenerateEngine

    return {"generate": GenerateEngine, "embed": EmbedEngine}


def engine_for(loaded) -> "Engine":
    """The engine for an already loaded model."""
    classes = _engine_classes()
    if loaded.task not in classes:
        raise ConfigError(f"unknown task {loaded.task!r}; known: {', '.join(sorted(classes))}")
    return classes[loaded.task](loaded)


def build_engine(spec: "ModelSpec") -> "Engine":
    """Load `spec`'s model and wrap it in the engine for its task. With `max_batch_size:
    auto` the engine's spec holds the size a sweep (or the cache) picked, and
    `engine.batch_choice` says how (raysight/autobatch.py)."""
    from raysight.autobatch import resolve_batch_size
    from raysight.loading import load_model

    engine = engine_for(load_model(spec))
    resolve_batch_size(engine)
    return engine
