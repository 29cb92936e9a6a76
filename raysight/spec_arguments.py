"""The command-line flags that build a ModelSpec, shared by every command that loads a model.

`raysight ask|embed|serve` and the offline job commands all take `--model` (or `--config`)
plus the same overrides; they live in the core so that each command line (the face and both
apps) reads them from one place without importing another command's module.
"""

from __future__ import annotations

import argparse

from raysight.errors import RaysightError
from raysight.spec import ModelSpec


def add_spec_arguments(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """Flags that build a ModelSpec: --model (or --config YAML) plus common overrides."""
    parser.add_argument(
        "--model",
        action="append" if multiple else "store",
        help="Hugging Face id, local folder or builtin:NAME (builtin:shapes-vlm, builtin:shapes-clip)",
    )
    parser.add_argument("--config", action="append" if multiple else "store",
                        help="a ModelSpec YAML file (instead of --model)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--max-batch-size", metavar="N|auto",
                        help="most items per forward, or 'auto' (a start-up sweep picks it)")


def spec_from_arguments(args: argparse.Namespace, model: str | None = None,
                        config: str | None = None) -> ModelSpec:
    """One ModelSpec from the parsed flags (YAML first, flags override)."""
    data: dict = {}
    if config:
        data.update(ModelSpec.from_yaml(config).model_dump(exclude_unset=True))
    if model:
        data["model"] = model
    overrides = {"device": args.device, "dtype": args.dtype, "max_batch_size": args.max_batch_size}
    data.update({key: value for key, value in overrides.items() if value is not None})
    if "model" not in data:
        raise RaysightError("give --model (or --config with a ModelSpec YAML)")
    return ModelSpec.from_mapping(data, source="command line")
