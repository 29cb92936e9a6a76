"""Offline jobs on Ray Data: caption / ask, embed, classify and index large image sets.

    python -m batch_jobs.caption --model builtin:shapes-vlm --input photos/ --output captions/
    python -m batch_jobs.caption --model M --input questions.parquet --output answers/  # prompt column
    python -m batch_jobs.embed --model builtin:shapes-clip --input photos/ --output vectors/
    python -m batch_jobs.classify --model builtin:shapes-clip --input photos/ --output labels/ \
        --labels "a red circle,a blue square"
    python -m batch_jobs.index --input vectors/ --output shapes-index/ [--index-type ivf]

On a cluster: `ray job submit --address http://HEAD:8265 --working-dir . -- python -m
batch_jobs.caption ...` (with the cluster's token in the submitting shell: RAY_AUTH_TOKEN or
~/.ray/auth_token). Inputs and outputs may be object-store URIs (s3://bucket/photos/) that every
node can read. `raysight job caption ...` runs the same `main(argv)` as `python -m`.

Each job: read -> CPU preprocess actors (the engine's own preprocess, no weights) -> model
actor pool (`engine.infer` + `postprocess`) -> Parquet part files written atomically. A bad
image costs one row (its `error` says why); re-running into the same output resumes.
From Python (the functions are imported lazily, so importing the package is cheap):

    from batch_jobs import run_caption
    summary = run_caption("builtin:shapes-vlm", "photos/", "captions/")   # JobSummary
"""

from __future__ import annotations

import importlib
from typing import Any

from batch_jobs.jobs import JOBS

# Each job's driver functions, as the job registry lists them, plus the shared names.
_EXPORTS = {name: job.module for job in JOBS.values() for name in job.exports} | {
    "JobConfig": "batch_jobs.config",
    "JobSummary": "batch_jobs.pipeline",
    "main": "batch_jobs.cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'batch_jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
