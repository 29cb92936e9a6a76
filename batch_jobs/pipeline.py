"""The pipeline: read -> CPU preprocess stage -> model stage (actor pool) -> Parquet parts.

`build_dataset` returns the lazy Dataset (for composition); `run_job` writes it, resuming
into an existing output, and returns a `JobSummary`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable

from batch_jobs.config import JobConfig
from batch_jobs.readers import InputSource, JobInput, resolve_input
from batch_jobs.resources import StagePlan, plan_job_on_nodes
from batch_jobs.stages import ModelStage, PreprocessStage
from batch_jobs.writer import SUMMARY_FILE, OutputFolder, PartFileDatasink

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a run did. `rows` counts this run's rows; `output_rows` all rows in the folder."""

    job: str
    output: str
    rows: int
    failures: int
    failure_reasons: dict[str, int]
    failure_examples: dict[str, str]
    skipped: int
    output_rows: int
    seconds: float
    images_per_s: float
    plan: str
    parts_written: int = 0
    max_batch_size: int | None = None  # the spec's, after `auto` was resolved
    auto_batch: dict | None = None  # how `auto` picked it (raysight.autobatch.BatchChoice)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def format(self) -> str:
        lines = [
            f"{self.job}: {self.rows} rows in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s), "
            f"{self.failures} failed, {self.skipped} already done; {self.output_rows} rows in "
            f"{self.output}",
            f"  {self.plan}",
        ]
        if self.auto_batch:
            source = ("cached" if self.auto_batch.get("from_cache")
                      else f"swept in {self.auto_batch.get('seconds', 0):.1f} s")
            lines.append(f"  max_batch_size auto -> {self.max_batch_size} ({source} on "
                         f"{self.auto_batch.get('device')})")
        for reason, count in sorted(self.failure_reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count} x {reason}: {self.failure_examples.get(reason, '')}")
        return "\n".join(lines)


def ensure_ray(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS), else start raysight's private local Ray (loopback
    only, token auth, gone with this process even when it is killed), unless this process
    is connected to Ray already."""
    import ray

    from raysight.local_ray import connect_ray

    if not ray.is_initialized():
        connect_ray(address)


def job_dataset(name: str, model, input: str, **options) -> "ray.data.Dataset":
    """The lazy Dataset of the row job `name` (what the *_dataset driver functions return)."""
    from batch_jobs.config import job_config_for

    job = job_config_for(name, model, input, **options)
    ensure_ray(job.ray_address)
    return build_dataset(job)


def run_named_job(name: str, model, input: str, output: str, **options) -> "JobSummary":
    """Run the row job `name` into `output` (what the run_* driver functions do)."""
    from batch_jobs.config import job_config_for

    return run_job(job_config_for(name, model, input, output, **options))


def current_plan(job: JobConfig) -> StagePlan:
    """The job's plan on the nodes of the Ray this process is connected to."""
    import ray

    from raysight.placement import nodes_from_ray

    return plan_job_on_nodes(job, nodes_from_ray(ray.nodes()))


def build_dataset(
    job: JobConfig, *, skip: Iterable[str] = (), plan: StagePlan | None = None
) -> "ray.data.Dataset":
    """The job's lazy Dataset: every input row not in `skip`, with its result columns.

    Nothing runs until the Dataset is consumed (written, iterated, `materialize()`d).
    """
    source = resolve_input(job)
    plan = plan or current_plan(job)
    job, _ = resolve_batch_sizes(job, plan)
    rows = JobInput(job, source, plan.read_num_cpus).dataset(skip)
    if rows is None:
        import ray.data

        return ray.data.from_items([])
    return _add_stages(job, source, plan, rows)


def resolve_batch_sizes(job: JobConfig, plan: StagePlan) -> tuple[JobConfig, dict | None]:
    """The job with `auto` batch sizes replaced by numbers, and how they were picked.

    The spec's `max_batch_size: auto` is resolved once, on a model actor's resources (its
    device, its torch threads), before the pipeline starts: every actor then runs the same
    size, and the summary can say which (the sweep's cache makes the next run's look-up cheap).
    """
    spec, choice = job.spec, None
    if spec.max_batch_size == "auto":
        import ray

        task = ray.remote(num_cpus=plan.model_num_cpus, num_gpus=plan.model_num_gpus,
                          max_retries=0)(_pick_batch_size)
        choice = ray.get(task.remote(spec, job.torch_threads, plan.model_actors))
        spec = spec.model_copy(update={"max_batch_size": choice["size"]})
        logger.info("%s job: max_batch_size auto -> %d", job.job, choice["size"])
    batch = spec.max_batch_size if job.batch_size == "auto" else job.batch_size
    if spec is job.spec and batch == job.batch_size:
        return job, None
    return job.model_copy(update={"spec": spec, "batch_size": batch}), choice


def _pick_batch_size(spec, torch_threads: int | None, model_actors: int) -> dict:
    """Resolve `max_batch_size: auto` with a model actor's torch threads: the cache's pick
    when it has one (no model load), else a sweep on the model loaded as the actor would."""
    from batch_jobs.stages import set_torch_threads
    from raysight.autobatch import cached_choice
    from raysight.engines import build_engine

    set_torch_threads(torch_threads, model_actors)
    choice = cached_choice(spec) or build_engine(spec).batch_choice
    return choice.as_dict()


def _add_stages(job: JobConfig, source: InputSource, plan: StagePlan, dataset) -> "ray.data.Dataset":
    from ray.data import ActorPoolStrategy

    images = {"filesystem": source.filesystem, "image_root": source.image_root}
    model_options = {"job": job, "model_actors": plan.model_actors}
    if plan.preprocess_in_model:
        model_options.update(prepare_rows=True, **images)
    else:
        low, high = plan.preprocess_actors
        dataset = dataset.map_batches(
            PreprocessStage,
            fn_constructor_kwargs={"job": job, **images},
            compute=ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=plan.preprocess_num_cpus,
            batch_size=job.preprocess_batch_size,
            batch_format="pyarrow",
        )
    dataset = dataset.map_batches(
        ModelStage,
        fn_constructor_kwargs=model_options,
        compute=ActorPoolStrategy(size=plan.model_actors),
        num_cpus=plan.model_num_cpus,
        num_gpus=plan.model_num_gpus,
        batch_size=job.batch_size,
        batch_format="pyarrow",
    )
    dataset.context.enable_progress_bars = job.progress
    return dataset


def job_manifest(job: JobConfig, key: str) -> dict:
    """What an output folder holds; a resumed run must match it (see writer.OutputFolder)."""
    return {
        "job": job.job,
        "model": job.spec.model,
        "key": key,
        "prompt": job.prompt,
        "labels": list(job.labels),
        "max_new_tokens": job.max_new_tokens,
        "input": job.input,
    }


def run_job(job: JobConfig) -> JobSummary:
    """Run `job` into its output folder (resuming) and return what it did."""
    from raysight.errors import ConfigError

    if not job.output:
        raise ConfigError("the job needs an output folder (--output)")
    ensure_ray(job.ray_address)
    plan = current_plan(job)
    logger.info("%s job plan: %s", job.job, plan.describe())
    job, choice = resolve_batch_sizes(job, plan)
    source = resolve_input(job)
    job_input = JobInput(job, source, plan.read_num_cpus)
    key = job_input.key
    folder = OutputFolder(job.output)
    folder.prepare(job_manifest(job, key), overwrite=job.overwrite)
    done = set(folder.read_column(key))
    rows = job_input.dataset(skip=done)
    sink = PartFileDatasink(job.output, uuid.uuid4().hex[:8], job.rows_per_file)
    started = time.perf_counter()
    if rows is not None:
        dataset = _add_stages(job, source, plan, rows)
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": plan.write_num_cpus})
    seconds = time.perf_counter() - started
    summary = _summarise(job, sink.write_returns, skipped=len(done), seconds=seconds,
                         output_rows=len(folder.read_column(key)), plan=plan)
    summary.max_batch_size = job.spec.max_batch_size
    summary.auto_batch = choice
    folder.write_json(SUMMARY_FILE, json.loads(summary.to_json()))
    return summary


def _summarise(job, returns: list[dict], *, skipped: int, seconds: float, output_rows: int,
               plan: StagePlan) -> JobSummary:
    rows = sum(r["rows"] for r in returns)
    reasons: dict[str, int] = {}
    examples: dict[str, str] = {}
    for result in returns:
        for reason, count in result["failures"].items():
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, message in result["examples"].items():
            examples.setdefault(reason, message)
    return JobSummary(
        job=job.job,
        output=job.output,
        rows=rows,
        failures=sum(reasons.values()),
        failure_reasons=reasons,
        failure_examples=examples,
        skipped=skipped,
        output_rows=output_rows,
        seconds=round(seconds, 3),
        images_per_s=round(rows / seconds, 2) if seconds > 0 and rows else 0.0,
        plan=plan.describe(),
        parts_written=sum(1 for r in returns if r.get("file")),
    )
