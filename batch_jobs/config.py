"""JobConfig: everything one offline job needs, in one frozen object.

The CLI flags and the Python driver functions only build a JobConfig; the pipeline reads it.
The ``Field(description=...)`` texts are the documentation of each setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raysight.paths import absolute
from raysight.spec import BatchSize, ModelSpec, validate_config

from batch_jobs.jobs import ROW_JOBS, job_named

JobName = Literal[ROW_JOBS]  # type: ignore[valid-type] - the registry's row jobs
InputFormat = Literal["auto", "images", "parquet", "csv", "json"]


class JobConfig(BaseModel):
    """One caption / embed / classify job: model, input, output and how it runs on Ray."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: JobName = Field(description="Which job: 'caption' (and ask/VQA), 'embed' or 'classify'.")
    spec: ModelSpec = Field(description="The model, exactly as the online path describes it.")
    input: str = Field(
        description="A folder of images, a glob ('photos/**/*.jpg'), or a Parquet / CSV / JSONL "
        "file or folder with an image column. Local paths or any URI pyarrow opens (s3://, gs://)."
    )
    output: str | None = Field(
        None,
        description="Folder the Parquet part files go to. Only the dataset builders may leave "
        "it out; the run_* functions need it.",
    )
    input_format: InputFormat = Field(
        "auto", description="'images', 'parquet', 'csv', 'json' (JSON lines), or 'auto' to tell "
        "from the file extensions."
    )
    image_column: str = Field(
        "image", description="Table inputs: the column holding image bytes, a path or an URL."
    )
    id_column: str | None = Field(
        None,
        description="Table inputs: the column that identifies a row in the output and on resume. "
        "Defaults to 'id' when the table has one, else the image column when it holds paths.",
    )
    prompt_column: str = Field(
        "prompt", description="Table inputs, caption job: a per-row prompt column (ask / VQA), "
        "used when the table has it."
    )
    text_column: str = Field(
        "text", description="Table inputs, embed job: rows with no image embed this text instead."
    )
    image_root: str | None = Field(
        None,
        description="Table inputs: the folder relative image paths are read from. Defaults to "
        "the folder of the input table.",
    )
    prompt: str | None = Field(
        None, description="Caption job: one prompt for every image (a question asks it); no "
        "prompt captions."
    )
    max_new_tokens: int | None = Field(
        None, gt=0, description="Caption job: new tokens per answer (default: the spec's)."
    )
    labels: tuple[str, ...] = Field(
        (), description="Classify job: the candidate labels, e.g. 'a red circle'."
    )
    batch_size: BatchSize | Literal["auto"] = Field(
        32, description="Rows per call of the model stage. The engine splits it further "
        "into the spec's max_batch_size. 'auto': the spec's max_batch_size (when that is "
        "'auto' too, one sweep on a model actor's device picks both before the job starts; the "
        "pick is in the job's summary)."
    )
    preprocess_batch_size: int = Field(16, gt=0, description="Rows per call of the CPU stage.")
    actor_pool_size: int | None = Field(
        None, gt=0, description="Model actors. Default: one per GPU (by num_gpus), or one per "
        "4 CPUs of the cluster without GPUs."
    )
    preprocess_in: Literal["auto", "stage", "model"] = Field(
        "auto", description="Where images are decoded and preprocessed: 'stage' (CPU actors "
        "of their own, feeding the model actors), 'model' (in each model actor, before its "
        "forward). 'auto': 'model' when the model runs on CPU and the model actors' torch "
        "threads fill every CPU (e.g. --actor-pool-size 2 --torch-threads 1 on 2 CPUs), where "
        "a CPU stage would only take cores from the forward; else 'stage'."
    )
    preprocess_max_actors: int | None = Field(
        None, gt=0, description="Most CPU preprocess actors (the pool grows from 1 to this). "
        "Default: half the cluster's CPUs."
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per model actor. Default: 1 when the cluster has GPUs and "
        "the spec's device is not 'cpu', else 0."
    )
    model_num_cpus: float | None = Field(
        None, gt=0, description="CPUs each model actor reserves. Default: a fraction sized from "
        "the cluster so the read and preprocess stages always keep CPUs to run on."
    )
    torch_threads: int | None = Field(
        None, gt=0, description="Torch threads in each model actor (default: half this node's "
        "cores, the model stage's share, split between the model actors; at least 1)."
    )
    rows_per_file: int = Field(
        1000, gt=0, description="Rows gathered into one output part file. Smaller files lose "
        "less work when a job is killed; larger files read faster."
    )
    overwrite: bool = Field(
        False, description="Delete what the output folder holds and start again. Without it a "
        "re-run resumes: rows already written are skipped."
    )
    progress: bool = Field(True, description="Show Ray Data's progress bars.")
    ray_address: str | None = Field(
        None, description="Ray cluster to connect to when Ray is not initialised yet (default: "
        "RAY_ADDRESS, else a private local Ray of this job; 'auto' joins a running local cluster)."
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> object:
        from raysight.spec import batch_size_or_auto

        return batch_size_or_auto(value, "batch_size")

    @field_validator("input", "output", "image_root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # Read and written by Ray workers, whose working folder is not the caller's.
        return None if value is None else absolute(value)

    @model_validator(mode="after")
    def _job_settings(self) -> "JobConfig":
        if self.job == "classify" and not self.labels:
            raise ValueError(
                "the classify job needs labels, e.g. --labels 'a red circle,a blue square'"
            )
        if self.job == "classify" and not all(label.strip() for label in self.labels):
            raise ValueError("every label must be a non-empty string")
        if self.job != "caption" and (self.prompt is not None or self.max_new_tokens):
            raise ValueError("prompt and max_new_tokens only apply to the caption job")
        if self.job != "classify" and self.labels:
            raise ValueError("labels only apply to the classify job")
        return self

    @property
    def engine_task(self) -> str:
        """The engine task this job needs (the registry's): 'generate' or 'embed'."""
        return job_named(self.job).engine_task


def make_job_config(**fields) -> JobConfig:
    """Build a JobConfig, turning validation errors into a ConfigError a person can act on."""
    return validate_config(JobConfig, fields, "job settings")


def job_config_for(job: str, model, input: str, output: str | None = None, **options) -> JobConfig:
    """The JobConfig of the driver functions: `model` is a ModelSpec, a mapping of its fields,
    or a model name / folder; `options` are further JobConfig fields."""
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, dict):
        spec = ModelSpec.from_mapping(model, source="model")
    else:
        spec = ModelSpec.from_mapping({"model": model}, source="model")
    if "labels" in options and options["labels"] is not None:
        options["labels"] = tuple(options["labels"])
    return make_job_config(job=job, spec=spec, input=input, output=output, **options)
