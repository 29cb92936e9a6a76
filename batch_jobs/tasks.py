"""What each job asks the engine for one row, and the output columns its answers become.

A job is a request builder plus a column builder; the stages around them are shared. The
registry maps a job name to its task, the way the core maps a model task to its engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raysight.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from batch_jobs.config import JobConfig

VECTOR_TYPE = pa.list_(pa.float32())


class JobTask:
    """Base: one row in, one engine request out; a batch of answers in, result columns out."""

    name = ""
    engine_task = ""
    result_fields: tuple[pa.Field, ...] = ()

    def request(self, job: "JobConfig", image: Any, row: dict) -> Any:
        raise NotImplementedError

    def columns(self, job: "JobConfig", results: list[Any]) -> dict[str, pa.Array]:
        """Result columns for a batch; `results` holds None where the row failed."""
        raise NotImplementedError


class CaptionTask(JobTask):
    """Caption an image, or answer a question about it (a fixed prompt or a per-row one)."""

    name = "caption"
    engine_task = "generate"
    result_fields = (pa.field("text", pa.string()), pa.field("finish_reason", pa.string()))

    def request(self, job, image, row):
        from raysight.engines.generate import GenerateRequest

        if image is None:
            raise InvalidRequest("this row has no image")
        prompt = row.get("prompt") or job.prompt
        return GenerateRequest.from_prompt(prompt, image, max_new_tokens=job.max_new_tokens)

    def columns(self, job, results):
        return {
            "text": pa.array([r.text if r else None for r in results], pa.string()),
            "finish_reason": pa.array([r.finish_reason if r else None for r in results], pa.string()),
        }


class EmbedTask(JobTask):
    """Embed a row's image, or its text when it has no image."""

    name = "embed"
    engine_task = "embed"
    result_fields = (pa.field("kind", pa.string()), pa.field("embedding", VECTOR_TYPE))

    def request(self, job, image, row):
        from raysight.engines.embed import EmbedRequest

        if image is not None:
            return EmbedRequest(image=image)
        if row.get("text") is not None:
            return EmbedRequest(text=row["text"])
        raise InvalidRequest("this row has neither an image nor a text to embed")

    def columns(self, job, results):
        return {
            "kind": pa.array([_kind(r) for r in results], pa.string()),
            "embedding": pa.array(
                [r.vector.tolist() if r else None for r in results], VECTOR_TYPE
            ),
        }


def _kind(result) -> str | None:
    if result is None:
        return None
    return "text" if result.tokens else "image"


class ClassifyTask(JobTask):
    """Zero-shot classify an image over the job's labels."""

    name = "classify"
    engine_task = "embed"
    result_fields = (
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("probs", VECTOR_TYPE),
    )

    def request(self, job, image, row):
        from raysight.engines.embed import EmbedRequest

        if image is None:
            raise InvalidRequest("this row has no image to classify")
        return EmbedRequest(image=image, labels=list(job.labels))

    def columns(self, job, results):
        return {
            "label": pa.array([r.label if r else None for r in results], pa.string()),
            "score": pa.array([max(r.probs) if r else None for r in results], pa.float32()),
            "probs": pa.array([r.probs if r else None for r in results], VECTOR_TYPE),
        }


TASKS: dict[str, JobTask] = {task.name: task for task in (CaptionTask(), EmbedTask(), ClassifyTask())}


def task_for(name: str) -> JobTask:
    if name not in TASKS:
        raise ConfigError(f"unknown job {name!r}; known jobs: {', '.join(sorted(TASKS))}")
    return TASKS[name]
