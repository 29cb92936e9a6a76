"""Caption images, or ask each a question (VQA): `python -m batch_jobs.caption --help`.

    run_caption("builtin:shapes-vlm", "photos/", "captions/")                 # -> JobSummary
    run_caption("builtin:shapes-vlm", "photos/", "colors/", prompt="What color is the shape?")
    caption_dataset("builtin:shapes-vlm", "questions.parquet")   # lazy Dataset, prompt column

Output columns: path (or the table's id), text, finish_reason, error, error_type.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ray.data

    from batch_jobs.pipeline import JobSummary


def caption_dataset(model, input: str, *, prompt: str | None = None, **options) -> "ray.data.Dataset":
    """The lazy Dataset of captions (or answers to `prompt`) for every input row."""
    from batch_jobs.pipeline import job_dataset

    return job_dataset("caption", model, input, prompt=prompt, **options)


def run_caption(model, input: str, output: str, *, prompt: str | None = None, **options) -> "JobSummary":
    """Caption (or ask `prompt` of) every input image into Parquet at `output`, resuming."""
    from batch_jobs.pipeline import run_named_job

    return run_named_job("caption", model, input, output, prompt=prompt, **options)


def main(argv: list[str] | None = None) -> int:
    from batch_jobs.cli import main as job_main

    return job_main("caption", argv)


if __name__ == "__main__":
    sys.exit(main())
