"""Command lines of the jobs: flags build a ModelSpec and a JobConfig, then one call runs it.

    python -m batch_jobs.caption  --model builtin:shapes-vlm  --input IMAGES --output OUT
    python -m batch_jobs.embed    --model builtin:shapes-clip --input IMAGES --output OUT
    python -m batch_jobs.classify --model builtin:shapes-clip --input IMAGES --output OUT --labels "a,b"
    python -m batch_jobs.index    --input EMBED_OUT --output INDEX_DIR   (or --model M --input IMAGES)

`main(job, argv)` is what each `python -m batch_jobs.<job>` and `raysight job <job>` call.
Every flag is declared in the job registry (batch_jobs/jobs.py); this module only reads it.
"""

from __future__ import annotations

import argparse
import sys

from raysight.errors import RaysightError

from batch_jobs.config import JobConfig
from batch_jobs.jobs import INPUT_FLAGS, RUNTIME_FLAGS, job_named


def add_job_arguments(parser: argparse.ArgumentParser, job: str) -> None:
    """The flags of `job`: the ModelSpec's, the input's, its own, and how it runs on Ray."""
    from raysight.spec_arguments import add_spec_arguments

    add_spec_arguments(parser)
    for flag in INPUT_FLAGS + job_named(job).flags:
        flag.add(parser)
    runtime = parser.add_argument_group("how it runs on Ray")
    for flag in RUNTIME_FLAGS:
        flag.add(runtime)


def job_config_from_arguments(job: str, args: argparse.Namespace) -> JobConfig:
    """One JobConfig of the row job `job` from parsed flags; unset flags keep the defaults."""
    from raysight.spec_arguments import spec_from_arguments

    from batch_jobs.config import make_job_config

    spec = spec_from_arguments(args, args.model, args.config)
    if args.allow_urls:
        spec = spec.model_copy(update={"images": spec.images.model_copy(update={"allow_urls": True})})
    described = job_named(job)
    flags = INPUT_FLAGS + described.flags + RUNTIME_FLAGS
    fields = {flag.field: getattr(args, flag.dest) for flag in flags
              if flag.field and getattr(args, flag.dest, None) is not None}
    return make_job_config(job=job, spec=spec, **fields, **described.config_fields(args))


def main(job: str, argv: list[str] | None = None) -> int:
    """Run `job` ('caption', 'embed', 'classify' or 'index') with command-line `argv`."""
    described = job_named(job)
    parser = argparse.ArgumentParser(prog=f"python -m batch_jobs.{job}",
                                     description=described.summary)
    add_job_arguments(parser, job)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    try:
        summary = described.run_command(args)
    except RaysightError as exc:
        print(f"{job}: error: {exc.message}", file=sys.stderr)
        return 2
    print(summary.to_json() if args.json else summary.format())
    return 0
