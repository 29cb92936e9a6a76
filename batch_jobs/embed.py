"""Embed images (and texts) into vectors: `python -m batch_jobs.embed --help`.

    run_embed("builtin:shapes-clip", "photos/", "vectors/")     # -> JobSummary
    embed_dataset("builtin:shapes-clip", "texts.jsonl")          # lazy Dataset; rows with no
                                                                 # image embed their text column
Output columns: path (or the table's id), kind ('image' / 'text'), embedding (list<float32>,
L2-normalised), error, error_type. `python -m batch_jobs.index` builds a search index from it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ray.data

    from batch_jobs.pipeline import JobSummary


def embed_dataset(model, input: str, **options) -> "ray.data.Dataset":
    """The lazy Dataset of embeddings for every input row."""
    from batch_jobs.pipeline import job_dataset

    return job_dataset("embed", model, input, **options)


def run_embed(model, input: str, output: str, **options) -> "JobSummary":
    """Embed every input row into Parquet at `output`, resuming."""
    from batch_jobs.pipeline import run_named_job

    return run_named_job("embed", model, input, output, **options)


def main(argv: list[str] | None = None) -> int:
    from batch_jobs.cli import main as job_main

    return job_main("embed", argv)


if __name__ == "__main__":
    sys.exit(main())
