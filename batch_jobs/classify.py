"""Zero-shot classify images over labels: `python -m batch_jobs.classify --help`.

    run_classify("builtin:shapes-clip", "photos/", "labels/", labels=["a red circle", "a blue square"])

Output columns: path (or the table's id), label (the most likely), score (its probability),
probs (one per label, in the order given), error, error_type.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import ray.data

    from batch_jobs.pipeline import JobSummary


def classify_dataset(model, input: str, *, labels: Sequence[str], **options) -> "ray.data.Dataset":
    """The lazy Dataset of label probabilities for every input image."""
    from batch_jobs.pipeline import job_dataset

    return job_dataset("classify", model, input, labels=labels, **options)


def run_classify(model, input: str, output: str, *, labels: Sequence[str], **options) -> "JobSummary":
    """Classify every input image over `labels` into Parquet at `output`, resuming."""
    from batch_jobs.pipeline import run_named_job

    return run_named_job("classify", model, input, output, labels=labels, **options)


def main(argv: list[str] | None = None) -> int:
    from batch_jobs.cli import main as job_main

    return job_main("classify", argv)


if __name__ == "__main__":
    sys.exit(main())
