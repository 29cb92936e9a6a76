"""Models raysight ships: tiny, trained here on the shapes it draws, so it answers offline.

``builtin:shapes-clip`` is a CLIP dual encoder for the 12 shape captions; ``builtin:shapes-vlm``
is a BLIP captioner that also answers "What shape is this?" and "What color is the shape?".
Both are reproduced from random weights by one command, ``python -m raysight.builtin.train
all --threads 1`` (shapes-clip first: shapes-vlm's vision tower starts from it).
"""

from __future__ import annotations

from pathlib import Path

from raysight.errors import UnknownModel

MODELS_DIR = Path(__file__).resolve().parent / "models"
PREFIX = "builtin:"

BUILTIN_MODELS: dict[str, Path] = {
    "shapes-clip": MODELS_DIR / "shapes-clip",
    "shapes-vlm": MODELS_DIR / "shapes-vlm",
}


def resolve_builtin(name: str) -> Path:
    """The folder of built-in model `name` ("shapes-vlm" or "builtin:shapes-vlm")."""
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    folder = BUILTIN_MODELS.get(key)
    if folder is None:
        known = ", ".join(f"{PREFIX}{known}" for known in BUILTIN_MODELS)
        raise UnknownModel(f"no built-in model named {name!r}; the built-in models are: {known}")
    if not (folder / "config.json").is_file():
        raise UnknownModel(
            f"built-in model {key!r} is missing its files in {folder}; rebuild it with "
            f"`python -m raysight.builtin.train all --threads 1`"
        )
    return folder
