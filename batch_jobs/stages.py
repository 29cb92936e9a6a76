"""The stages every job runs, as plain callable classes (the pipeline applies Ray).

`PreprocessStage` (CPU actors, no weights): row -> engine request -> `engine.preprocess`
-> the prepared item pickled into the ``prepared`` column, or the row's error.
`ModelStage` (the model's actor pool): ``prepared`` -> `engine.infer` + `postprocess` ->
the job's result columns. With ``prepare_rows`` (a plan that preprocesses in the model
actors, see batch_jobs/resources.py) it takes the read rows instead and prepares them itself,
with the same `RowPreparer` as the CPU stage. A row that fails anywhere keeps its key, gets
``error`` (what was wrong) and ``error_type`` (the error's class), and its batchmates are
unaffected.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa

from raysight.errors import ConfigError, ImageError, ImageTooLarge, RaysightError

from batch_jobs.codec import PREPARED_TYPE, decode_prepared, encode_prepared
from batch_jobs.config import JobConfig
from batch_jobs.readers import IMAGE, IMAGE_BYTES
from batch_jobs.jobs import job_named

logger = logging.getLogger(__name__)

PREPARED = "prepared"
ERROR = "error"
ERROR_TYPE = "error_type"
_URL_PREFIXES = ("http://", "https://", "data:")


class ImageSourceReader:
    """Turns a row's ``image`` value into what the engine loads: bytes, or a URL string.

    Paths (relative ones under `image_root`) are read through the input's filesystem, so a
    table on S3 can point at images on S3. URLs go to the core loader, under the spec's
    image policy (``images.allow_urls``), exactly as online.
    """

    def __init__(self, filesystem, image_root: str, max_bytes: int):
        self.filesystem = filesystem
        self.image_root = image_root
        self.max_bytes = max_bytes

    def source(self, value: Any) -> Any:
        if value is None or isinstance(value, (bytes, bytearray)):
            return value
        if not isinstance(value, str):
            raise ImageError(f"the image column holds a {type(value).__name__}; expected bytes, "
                             "a path or an URL")
        if value[:8].lower().startswith(_URL_PREFIXES):
            return value
        return self._read(value)

    def _read(self, path: str) -> bytes:
        import pyarrow.fs as pafs

        filesystem = self.filesystem
        if path.startswith("file://"):
            path = path[len("file://"):]
        elif "://" in path:
            filesystem, path = pafs.FileSystem.from_uri(path)
        elif not path.startswith("/"):
            path = f"{self.image_root.rstrip('/')}/{path}"
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise ImageError(f"image file not found: {path}")
        if info.size is not None and info.size > self.max_bytes:
            raise ImageTooLarge(f"image file {path} is {info.size:,} bytes; the limit is "
                                f"{self.max_bytes:,} bytes (images.max_image_bytes)")
        with filesystem.open_input_stream(path) as stream:
            return stream.read()


class RowPreparer:
    """One input row -> the engine's prepared item, or the RaysightError saying why not."""

    def __init__(self, job: JobConfig, engine, filesystem=None, image_root: str = "."):
        import pyarrow.fs as pafs

        self.job = job
        self.task = job_named(job.job)
        self.engine = engine
        self.images = ImageSourceReader(
            filesystem or pafs.LocalFileSystem(), image_root, job.spec.images.max_image_bytes
        )

    def prepare(self, row: dict) -> Any:
        try:
            image = row[IMAGE_BYTES] if IMAGE_BYTES in row else row.get(IMAGE)
            request = self.task.request(self.job, self.images.source(image), row)
        except RaysightError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable file; one row fails
            logger.warning("could not read the image of one row: %s", exc)
            return ImageError(f"cannot read the image: {type(exc).__name__}: {exc}")
        return self.engine.preprocess_safely(request)


def _without_images(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in (IMAGE, IMAGE_BYTES) if c in batch.column_names])


class PreprocessStage:
    """CPU stage: decode, check and process each row with the engine's own preprocess."""

    def __init__(self, job: JobConfig, filesystem=None, image_root: str = "."):
        from batch_jobs.preprocessor import build_preprocessor

        self.engine = build_preprocessor(job.spec)
        _check_engine_task(self.engine, job)
        self.rows = RowPreparer(job, self.engine, filesystem, image_root)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prepared: list[bytes | None] = []
        errors: list[str | None] = []
        error_types: list[str | None] = []
        for row in batch.to_pylist():
            item = self.prepare(row)
            if isinstance(item, RaysightError):
                prepared.append(None)
                errors.append(item.message)
                error_types.append(type(item).__name__)
            else:
                prepared.append(encode_prepared(item))
                errors.append(None)
                error_types.append(None)
        out = _without_images(batch)
        out = out.append_column(PREPARED, pa.array(prepared, PREPARED_TYPE))
        out = out.append_column(ERROR, pa.array(errors, pa.string()))
        return out.append_column(ERROR_TYPE, pa.array(error_types, pa.string()))

    def prepare(self, row: dict) -> Any:
        """The prepared item for one row, or the RaysightError saying why there is none."""
        return self.rows.prepare(row)


class ModelStage:
    """Model stage: one batched `infer` + `postprocess` over the rows that prepared cleanly.

    `prepare_rows`: the batches are read rows (no CPU stage before this one), prepared here
    by the loaded engine's own preprocess; `filesystem` and `image_root` find their images.
    """

    def __init__(self, job: JobConfig, model_actors: int = 1, *, prepare_rows: bool = False,
                 filesystem=None, image_root: str = "."):
        from raysight.engines import build_engine

        set_torch_threads(job.torch_threads, model_actors)
        self.job = job
        self.task = job_named(job.job)
        self.engine = build_engine(job.spec)
        _check_engine_task(self.engine, job)
        self.rows = RowPreparer(job, self.engine, filesystem, image_root) if prepare_rows else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.rows is not None:
            items = [self.rows.prepare(row) for row in batch.to_pylist()]
            errors = [i.message if isinstance(i, RaysightError) else None for i in items]
            error_types = [type(i).__name__ if isinstance(i, RaysightError) else None
                           for i in items]
            batch = _without_images(batch)
        else:
            errors = batch[ERROR].to_pylist()
            error_types = batch[ERROR_TYPE].to_pylist()
            items = [
                decode_prepared(data) if data is not None else RaysightError(errors[i] or "")
                for i, data in enumerate(batch[PREPARED].to_pylist())
            ]
            batch = batch.drop_columns([PREPARED, ERROR, ERROR_TYPE])
        results = self.engine.infer_and_postprocess(items)
        answers: list[Any] = []
        for index, result in enumerate(results):
            if isinstance(result, RaysightError):
                if errors[index] is None:
                    errors[index] = result.message
                    error_types[index] = type(result).__name__
                answers.append(None)
            else:
                answers.append(result)
        out = batch
        for name, column in self.task.columns(self.job, answers).items():
            out = out.append_column(name, column)
        out = out.append_column(ERROR, pa.array(errors, pa.string()))
        return out.append_column(ERROR_TYPE, pa.array(error_types, pa.string()))


def _check_engine_task(engine, job: JobConfig) -> None:
    if engine.task != job.engine_task:
        kind = "a generative model" if job.engine_task == "generate" else "a dual encoder (CLIP/SigLIP)"
        raise ConfigError(
            f"the {job.job} job needs {kind}; {job.spec.model} is a {engine.task!r} model"
        )


def set_torch_threads(threads: int | None, model_actors: int) -> None:
    """Set torch's threads from the plan, not from what Ray's reservation implies.

    Ray sets OMP_NUM_THREADS=1 in actors that reserve under one CPU, while a bare torch takes
    every core; neither fits. The model stage is planned to use half the node's cores (the
    CPU stages get the rest), shared between its actors. More threads than that fight the
    preprocess actors for cores, and spinning torch threads on a busy core cost more than
    they bring (on 2 cores, 1 thread captioned 1.5x faster than 2).
    """
    import torch

    from batch_jobs.resources import MODEL_CPU_SHARE

    if threads is None:
        threads = max(1, int((os.cpu_count() or 1) * MODEL_CPU_SHARE / max(1, model_actors)))
    torch.set_num_threads(threads)
