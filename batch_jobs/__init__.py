"""Offline jobs on Ray Data: caption / ask, embed, classify and index large image sets.

Each job runs as ``python -m batch_jobs.<job>`` (also under ``ray job submit``) or from a
Python driver. The functions below are imported lazily, so importing the package is cheap.

    from batch_jobs import run_caption
    summary = run_caption("builtin:shapes-vlm", "photos/", "captions/")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_caption": "batch_jobs.caption",
    "caption_dataset": "batch_jobs.caption",
    "run_embed": "batch_jobs.embed",
    "embed_dataset": "batch_jobs.embed",
    "run_classify": "batch_jobs.classify",
    "classify_dataset": "batch_jobs.classify",
    "run_index": "batch_jobs.index",
    "build_index": "batch_jobs.index",
    "JobConfig": "batch_jobs.config",
    "JobSummary": "batch_jobs.pipeline",
    "main": "batch_jobs.cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'batch_jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
