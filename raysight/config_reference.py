"""Print the configuration reference (Markdown) from the pydantic field descriptions.

    python -m raysight.config_reference

The README's "Configuration reference" section is this output; a test keeps them equal.
"""

from __future__ import annotations

from pydantic import BaseModel

from raysight.spec import GenerationDefaults, ImageInputPolicy, ModelSpec


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "see below"
    value = field.default
    return "`null`" if value is None else f"`{value!r}`".replace("'", '"')


def model_table(model: type[BaseModel], prefix: str = "") -> str:
    rows = ["| field | default | description |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_default(field)} | {description} |")
    return "\n".join(rows)


def reference() -> str:
    parts = [
        "### ModelSpec",
        model_table(ModelSpec),
        "### ModelSpec.generation",
        model_table(GenerationDefaults, "generation."),
        "### ModelSpec.images",
        model_table(ImageInputPolicy, "images."),
    ]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
