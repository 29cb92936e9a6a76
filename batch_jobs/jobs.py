"""The registry of offline jobs: each job described once.

A `Job` says what one job is: its engine task, the request it asks the engine for each row,
the output columns its answers become, its own command-line flags, and the driver functions
its module exports. The job commands (`python -m batch_jobs.JOB`, `raysight job JOB`), the
driver API (`batch_jobs.run_caption`, ...) and the stages read this registry; a new flag or
job is added here and nowhere else. This module stays light (no pyarrow at import), because
`import batch_jobs` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raysight.errors import ConfigError, InvalidRequest, RaysightError

if TYPE_CHECKING:
    import pyarrow as pa

    from batch_jobs.config import JobConfig


@dataclass(frozen=True)
class Flag:
    """One command-line flag. `field` is the JobConfig field it sets when given (None: the
    job reads it itself); `options` are argparse's keywords."""

    name: str
    help: str
    field: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # older spellings that still work

    def add(self, parser) -> None:
        parser.add_argument(self.name, *self.aliases, help=self.help, **self.options)

    @property
    def dest(self) -> str:
        return self.options.get("dest") or self.name.lstrip("-").replace("-", "_")


def _field(name: str, help: str, **options) -> Flag:
    """A flag that sets the JobConfig field of the same name (`--batch-size` -> batch_size)."""
    return Flag(name, help, name.lstrip("-").replace("-", "_"), options)


# Flags every job that reads images takes (the ModelSpec flags come from raysight.spec_arguments).
INPUT_FLAGS = (
    _field("--input", "folder or glob of images, or a Parquet/CSV/JSONL file or folder",
           required=True),
    _field("--output", "output folder for the Parquet part files (re-run to resume)",
           required=True),
    _field("--input-format", "how to read --input (default: from the file extensions)",
           choices=["auto", "images", "parquet", "csv", "json"], default="auto"),
    _field("--image-column", "table inputs: image column", default="image"),
    _field("--id-column", "table inputs: id column (default: 'id' or the path)"),
    _field("--image-root", "table inputs: folder relative image paths are under"),
    Flag("--allow-urls", "fetch http(s) image URLs found in a table (images.allow_urls)",
         None, {"action": "store_true"}),
)

# How a job runs on Ray: an argument group of its own in --help.
RUNTIME_FLAGS = (
    _field("--batch-size", "rows per model-stage call, or 'auto' (the model's max_batch_size, "
           "picked by a sweep when that is auto)", metavar="N|auto"),
    _field("--preprocess-batch-size", "rows per CPU-stage call", type=int),
    _field("--actor-pool-size", "model actors (default: from the cluster)", type=int),
    _field("--preprocess-max-actors", "most CPU-stage actors", type=int),
    _field("--preprocess-in", "where images are prepared: a CPU stage of their own, or the "
           "model actors (default auto: the model actors when their torch threads fill every "
           "CPU)", choices=("auto", "stage", "model")),
    _field("--num-gpus", "GPUs per model actor", type=float),
    _field("--model-num-cpus", "CPUs each model actor reserves", type=float),
    _field("--torch-threads", "torch threads per model actor", type=int),
    _field("--rows-per-file", "rows per output part file", type=int),
    _field("--overwrite", "replace what the output folder holds instead of resuming",
           action="store_true"),
    Flag("--no-progress", "hide the progress bars", "progress",
         {"action": "store_false", "dest": "progress"}),
    Flag("--address", "Ray cluster to join, e.g. HOST:6379 or 'auto' (default: $RAY_ADDRESS, "
         "else a private local Ray; 'auto' joins a running local cluster)", "ray_address",
         {"dest": "ray_address"}, aliases=("--ray-address",)),
)


class Job:
    """One offline job. Row jobs (caption, embed, classify) turn each input row into one
    engine request and each answer into result columns; the stages around them are shared."""

    name = ""
    summary = ""  # the command's description
    engine_task = ""  # the engine task its model must have: 'generate' or 'embed'
    flags: tuple[Flag, ...] = ()  # its own flags, after INPUT_FLAGS
    exports: tuple[str, ...] = ()  # driver functions its module batch_jobs.<name> defines
    row_inputs: tuple[str, ...] = ()  # per-row table columns it reads besides the image

    @property
    def module(self) -> str:
        return f"batch_jobs.{self.name}"

    def config_fields(self, args: argparse.Namespace) -> dict[str, Any]:
        """JobConfig fields from its flags that do not map one to one (e.g. labels)."""
        return {}

    def run_command(self, args: argparse.Namespace):
        """What its command runs once the flags are parsed; returns the summary to print."""
        from batch_jobs import cli, pipeline

        return pipeline.run_job(cli.job_config_from_arguments(self.name, args))

    # -- per row ---------------------------------------------------------------------------
    def request(self, job: "JobConfig", image: Any, row: dict) -> Any:
        raise NotImplementedError

    def columns(self, job: "JobConfig", results: list[Any]) -> dict[str, "pa.Array"]:
        """Result columns for a batch; `results` holds None where the row failed."""
        raise NotImplementedError


def _vectors():
    import pyarrow as pa

    return pa.list_(pa.float32())


class CaptionJob(Job):
    """Caption an image, or answer a question about it (a fixed prompt or a per-row one)."""

    name = "caption"
    summary = "Caption images, or ask each one a question (--prompt, or a prompt column)."
    engine_task = "generate"
    flags = (
        _field("--prompt", "question asked of every image (default: caption)"),
        _field("--prompt-column", "table inputs: per-row prompt column (ask / VQA)",
               default="prompt"),
        _field("--max-new-tokens", "new tokens per answer (default: the model's)", type=int),
    )
    exports = ("run_caption", "caption_dataset")
    row_inputs = ("prompt",)

    def request(self, job, image, row):
        from raysight.engines.generate import GenerateRequest

        if image is None:
            raise InvalidRequest("this row has no image")
        prompt = row.get("prompt") or job.prompt
        return GenerateRequest.from_prompt(prompt, image, max_new_tokens=job.max_new_tokens)

    def columns(self, job, results):
        import pyarrow as pa

        return {
            "text": pa.array([r.text if r else None for r in results], pa.string()),
            "finish_reason": pa.array([r.finish_reason if r else None for r in results], pa.string()),
        }


TEXT_COLUMN = _field("--text-column", "table inputs: rows without an image embed this text",
                     default="text")


class EmbedJob(Job):
    """Embed a row's image, or its text when it has no image."""

    name = "embed"
    summary = "Embed images (and texts from a table's text column) into vectors."
    engine_task = "embed"
    flags = (TEXT_COLUMN,)
    exports = ("run_embed", "embed_dataset")
    row_inputs = ("text",)

    def request(self, job, image, row):
        from raysight.engines.embed import EmbedRequest

        if image is not None:
            return EmbedRequest(image=image)
        if row.get("text") is not None:
            return EmbedRequest(text=row["text"])
        raise InvalidRequest("this row has neither an image nor a text to embed")

    def columns(self, job, results):
        import pyarrow as pa

        kinds = [None if r is None else "text" if r.tokens else "image" for r in results]
        return {
            "kind": pa.array(kinds, pa.string()),
            "embedding": pa.array([r.vector.tolist() if r else None for r in results], _vectors()),
        }


class ClassifyJob(Job):
    """Zero-shot classify an image over the job's labels."""

    name = "classify"
    summary = "Zero-shot classify images over a list of labels."
    engine_task = "embed"
    flags = (
        Flag("--labels", "comma-separated labels, e.g. 'a red circle,a cat'"),
        Flag("--labels-file", "a file with one label per line"),
    )
    exports = ("run_classify", "classify_dataset")

    def config_fields(self, args):
        labels: list[str] = []
        if args.labels:
            labels += [label.strip() for label in args.labels.split(",") if label.strip()]
        if args.labels_file:
            try:
                with open(args.labels_file, encoding="utf-8") as handle:
                    labels += [line.strip() for line in handle if line.strip()]
            except OSError as exc:
                raise RaysightError(
                    f"cannot read --labels-file {args.labels_file}: {exc.strerror}") from None
        return {"labels": tuple(labels)}

    def request(self, job, image, row):
        from raysight.engines.embed import EmbedRequest

        if image is None:
            raise InvalidRequest("this row has no image to classify")
        return EmbedRequest(image=image, labels=list(job.labels))

    def columns(self, job, results):
        import pyarrow as pa

        return {
            "label": pa.array([r.label if r else None for r in results], pa.string()),
            "score": pa.array([max(r.probs) if r else None for r in results], pa.float32()),
            "probs": pa.array([r.probs if r else None for r in results], _vectors()),
        }


class IndexJob(Job):
    """Index an embed job's output with FAISS; with --model, run the embed job first."""

    name = "index"
    summary = "Build a FAISS index from embed output (or from images with --model)."
    engine_task = "embed"
    flags = (
        TEXT_COLUMN,
        Flag("--index-type", "flat: exact search (default); ivf: approximate, for large N",
             None, {"choices": ["flat", "ivf"], "default": "flat"}),
        Flag("--nlist", "ivf: number of lists (default ~sqrt(N))", None, {"type": int}),
    )
    exports = ("run_index", "build_index")

    def run_command(self, args):
        from batch_jobs.index import index_from_arguments

        return index_from_arguments(args)


JOBS: dict[str, Job] = {job.name: job for job in (CaptionJob(), EmbedJob(), ClassifyJob(), IndexJob())}
ROW_JOBS = ("caption", "embed", "classify")  # the jobs a JobConfig runs row by row


def job_named(name: str) -> Job:
    """The job called `name`; an unknown name lists the known ones."""
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r}; known jobs: {', '.join(JOBS)}")
    return JOBS[name]
