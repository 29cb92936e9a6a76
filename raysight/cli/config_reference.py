"""Print the configuration reference (Markdown) from the pydantic field descriptions.

    python -m raysight.cli.config_reference

The README's "Configuration reference" section is this output; a test keeps them equal.
It documents the ModelSpec, the Serve app's ServeConfig and the batch jobs' JobConfig; it
lives in the command-line face because it reads both apps' configs (the core imports neither).
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from raysight.spec import AutoBatchSettings, GenerationDefaults, ImageInputPolicy, ModelSpec


def _default(field) -> str:
    """The default as a YAML reader would write it; a nested model's table follows its own."""
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def model_table(model: type[BaseModel], prefix: str = "") -> str:
    rows = ["| field | default | description |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_default(field)} | {description} |")
    return "\n".join(rows)


def _sections() -> list[tuple[str, str, type[BaseModel], str]]:
    """(heading, one-line introduction, model, field prefix) of each table, in order."""
    from batch_jobs.config import JobConfig
    from serve_app.config import (DeploymentOptions, IndexConfig, IngressOptions, ServeConfig,
                                  ServedModel)

    return [
        ("ModelSpec", "One model, for the Serve app and the batch jobs alike (a ModelSpec YAML "
         "file, `--config`, or the `--model` flags).", ModelSpec, ""),
        ("ModelSpec.generation", "", GenerationDefaults, "generation."),
        ("ModelSpec.images", "", ImageInputPolicy, "images."),
        ("ModelSpec.auto_batch", "", AutoBatchSettings, "auto_batch."),
        ("ServeConfig", "The Serve app (`raysight serve --serve-config FILE`, or the `args` of "
         "`serve_app/config.yaml` for `serve run`).", ServeConfig, ""),
        ("ServeConfig.models[]", "Each entry is written flat: the ModelSpec fields above, plus "
         "`deployment:`.", ServedModel, "models[]."),
        ("ServeConfig.models[].deployment", "", DeploymentOptions, "models[].deployment."),
        ("ServeConfig.indexes[]", "", IndexConfig, "indexes[]."),
        ("ServeConfig.ingress", "", IngressOptions, "ingress."),
        ("JobConfig", "One offline job. `run_caption`, `run_embed` and `run_classify` take "
         "`model`, `input` and `output`, and the other fields as keywords; the job commands "
         "take most as a flag of the same name (`batch_size` is `--batch-size`).", JobConfig, ""),
    ]


def reference() -> str:
    parts = []
    for heading, introduction, model, prefix in _sections():
        parts.append(f"### {heading}")
        if introduction:
            parts.append(introduction)
        parts.append(model_table(model, prefix))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
