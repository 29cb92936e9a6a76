"""Load the model and processor a ModelSpec describes, on its device, in eval mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysight.errors import ConfigError, UnknownModel
from raysight.spec import BUILTIN_PREFIX, ModelSpec

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to run: weights on the device, its processor, its family and task."""

    spec: ModelSpec
    model: Any
    processor: Any
    family: Any
    task: str
    model_type: str
    device: str
    dtype: Any


def resolve_source(spec: ModelSpec) -> str:
    """The folder or hub id `from_pretrained` should read, with built-in names resolved."""
    if spec.model.startswith(BUILTIN_PREFIX):
        from raysight.builtin import resolve_builtin

        return str(resolve_builtin(spec.model))
    return spec.model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def read_model_type(source: str, spec: ModelSpec) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as exc:
        hint = "" if Path(source).exists() else " (no such local folder either)"
        raise UnknownModel(f"cannot load a model config from {source!r}{hint}: {exc}") from None
    return config.model_type


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load `spec`'s model and processor through its family, ready for inference."""
    from raysight.families import family_for

    source = resolve_source(spec)
    model_type = read_model_type(source, spec)
    family = family_for(model_type, spec.task, spec.family)
    task = family.task
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    processor = family.load_processor(source, **common)
    model = family.load_model(source, dtype=dtype, **common)
    model.to(device)
    model.eval()
    logger.info("loaded %s (%s, %s) on %s as %s", spec.model, model_type, task, device, dtype)
    return LoadedModel(
        spec=spec,
        model=model,
        processor=processor,
        family=family,
        task=task,
        model_type=model_type,
        device=device,
        dtype=dtype,
    )
