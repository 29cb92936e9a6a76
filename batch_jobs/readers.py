"""Inputs: a folder or glob of images, or Parquet / CSV / JSONL tables with an image column.

Rows reach the CPU stage with the key (the row's identity in the output and on resume:
``path``, or a table's id column) and the image: ``bytes`` for an image folder (as
`read_binary_files` names it), ``image`` for a table (bytes, or a path / URL to load), plus
``prompt`` / ``text`` when the table has them. Files are listed on the driver, so
a resumed job skips finished images before a single byte of them is read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from raysight.errors import ConfigError
from raysight.storage import open_filesystem

from batch_jobs.config import JobConfig
from batch_jobs.jobs import job_named

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import ray.data

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "avif")
TABLE_FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "json", "json": "json"}
PATH_KEY = "path"
IMAGE = "image"
IMAGE_BYTES = "bytes"  # the column read_binary_files fills
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputSource:
    """The files a job reads and how: a list of images, or a list of tables."""

    format: str  # "images", "parquet", "csv" or "json"
    filesystem: Any  # a pyarrow FileSystem
    files: tuple[str, ...]
    image_root: str  # where relative image paths in a table are read from


def resolve_input(job: JobConfig) -> InputSource:
    """List the input's files on the driver and tell images from tables."""
    filesystem, path = open_filesystem(job.input)
    files = _list_files(filesystem, path, job.input)
    fmt = job.input_format
    if fmt == "auto":
        fmt = _detect_format(files, job.input)
    wanted = IMAGE_EXTENSIONS if fmt == "images" else _extensions_of(fmt)
    chosen = tuple(sorted(f for f in files if _extension(f) in wanted))
    if not chosen:
        raise ConfigError(
            f"no {fmt} files ({', '.join(wanted)}) found at {job.input!r}; check the path, or "
            "set --input-format"
        )
    # Paths inside the input's filesystem: for s3://bucket/images that is bucket/images.
    root = open_filesystem(job.image_root)[1] if job.image_root else os.path.dirname(chosen[0])
    return InputSource(format=fmt, filesystem=filesystem, files=chosen, image_root=root)


def _list_files(filesystem, path: str, shown: str) -> list[str]:
    import pyarrow.fs as pafs

    glob_at = min((path.find(c) for c in _GLOB_CHARS if c in path), default=-1)
    if glob_at >= 0:
        base = path[: path.rfind("/", 0, glob_at) + 1] or "."
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
        return [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [info.path]
    if info.type == pafs.FileType.Directory:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return [i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, path)]
    raise ConfigError(f"input {shown!r} does not exist (give a folder, a glob or a table file)")


def _hidden(path: str, root: str) -> bool:
    """Files under a '.' or '_' folder or named so (e.g. _SUCCESS, .tmp parts) are skipped."""
    relative = path[len(root):].lstrip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _extension(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""


def _extensions_of(fmt: str) -> tuple[str, ...]:
    return tuple(ext for ext, name in TABLE_FORMATS.items() if name == fmt)


def _detect_format(files: list[str], shown: str) -> str:
    extensions = {_extension(f) for f in files}
    if extensions & set(IMAGE_EXTENSIONS):
        return "images"
    tables = {TABLE_FORMATS[e] for e in extensions if e in TABLE_FORMATS}
    if len(tables) == 1:
        return tables.pop()
    found = ", ".join(sorted(extensions)) or "no files"
    raise ConfigError(
        f"cannot tell what {shown!r} holds (found: {found}); expected images "
        f"({', '.join(IMAGE_EXTENSIONS)}) or one kind of table (parquet, csv, jsonl). "
        "Set --input-format"
    )


# --- the dataset -------------------------------------------------------------------------


def read_images(source: InputSource, skip: Iterable[str], num_cpus: float, rows_per_block: int):
    """The image files not in `skip`, as rows of (path, image bytes). None if none are left."""
    import ray.data

    skip = set(skip)
    files = [f for f in source.files if f not in skip]
    if not files:
        return None
    dataset = ray.data.read_binary_files(
        files,
        include_paths=True,
        filesystem=source.filesystem,
        num_cpus=num_cpus,
        override_num_blocks=max(1, -(-len(files) // rows_per_block)),
    )
    # Ray names the bytes column "bytes"; renaming it here would add a separate task stage
    # that reserves a whole CPU, so the CPU stage reads it under that name instead.
    return dataset


def read_table(source: InputSource, num_cpus: float) -> "ray.data.Dataset":
    """The table files as one lazy dataset, columns as written."""
    import ray.data

    readers = {
        "parquet": ray.data.read_parquet,
        "csv": ray.data.read_csv,
        "json": ray.data.read_json,
    }
    context = ray.data.DataContext.get_current()
    # Ray 2.60 reads Parquet through a ListFiles task that reserves a whole CPU whatever
    # num_cpus says; with the model and preprocess pools holding their share of a small
    # cluster (1.5 of 2 CPUs) it never starts and the job waits forever. The older reader
    # honours num_cpus, and the files are listed already.
    previous, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return readers[source.format](
            list(source.files), filesystem=source.filesystem, num_cpus=num_cpus
        )
    finally:
        context.use_datasource_v2 = previous


@dataclass(frozen=True)
class TableColumns:
    """Which input columns a table job reads, and the key the output is written under."""

    key: str  # output column name: the id column's name, or "path"
    key_source: str  # input column the key is taken from
    image: str
    prompt: str | None
    text: str | None


def table_columns(schema_names: list[str], job: JobConfig, image_is_text: bool) -> TableColumns:
    """Pick the key, image, prompt and text columns of a table, with errors saying how to fix."""
    names = set(schema_names)
    row_inputs = job_named(job.job).row_inputs
    text = job.text_column if "text" in row_inputs and job.text_column in names else None
    if job.image_column not in names and not text:
        raise ConfigError(
            f"the input table has no image column {job.image_column!r} (columns: "
            f"{', '.join(schema_names)}); set --image-column"
        )
    if job.id_column:
        if job.id_column not in names:
            raise ConfigError(f"the input table has no id column {job.id_column!r}")
        key_source = job.id_column
    elif "id" in names:
        key_source = "id"
    elif job.image_column in names and image_is_text:
        key_source = job.image_column
    else:
        raise ConfigError(
            f"the image column {job.image_column!r} holds image bytes, so rows need an id "
            "column to be told apart in the output and on resume; set --id-column"
        )
    key = PATH_KEY if key_source == job.image_column else key_source
    prompt = job.prompt_column if "prompt" in row_inputs and job.prompt_column in names else None
    image = job.image_column if job.image_column in names else ""
    return TableColumns(key=key, key_source=key_source, image=image, prompt=prompt, text=text)


def key_hashes(keys: Iterable[str]) -> "np.ndarray":
    """Sorted 64-bit hashes of keys: a compact set of finished rows to ship to read tasks."""
    import numpy as np

    return np.unique(np.fromiter((_hash_key(k) for k in keys), dtype=np.int64))


def _hash_key(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


def normalise_table_rows(table: "pa.Table", columns: TableColumns, skip: "np.ndarray") -> "pa.Table":
    """One batch of table rows in the pipeline's columns, rows whose key is in `skip` dropped."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.cast(table[columns.key_source], pa.string())
    out = {columns.key: keys}
    if columns.image:
        image = table[columns.image]
        if pa.types.is_large_string(image.type) or pa.types.is_large_binary(image.type):
            image = pc.cast(image, pa.string() if pa.types.is_large_string(image.type) else pa.binary())
        out[IMAGE] = image
        if columns.key != PATH_KEY and pa.types.is_string(image.type):
            out[PATH_KEY] = image
    else:
        out[IMAGE] = pa.nulls(table.num_rows, pa.binary())
    if columns.prompt:
        out["prompt"] = pc.cast(table[columns.prompt], pa.string())
    if columns.text:
        out["text"] = pc.cast(table[columns.text], pa.string())
    result = pa.table(out)
    if len(skip):
        hashed = np.array([_hash_key(k) if k is not None else 0 for k in keys.to_pylist()], np.int64)
        result = result.filter(pa.array(~np.isin(hashed, skip)))
    return result


class JobInput:
    """A job's input as rows for the CPU stage; knows the key its output is written under."""

    def __init__(self, job: JobConfig, source: InputSource, num_cpus: float):
        self.job = job
        self.source = source
        self.num_cpus = num_cpus
        self.columns: TableColumns | None = None
        self.key = PATH_KEY
        if source.format != "images":
            import pyarrow as pa

            self._table = read_table(source, num_cpus)
            schema = self._table.schema()
            names = list(schema.names)
            image_type = schema.types[names.index(job.image_column)] if job.image_column in names else None
            image_is_text = image_type is not None and (
                pa.types.is_string(image_type) or pa.types.is_large_string(image_type))
            self.columns = table_columns(names, job, image_is_text)
            self.key = self.columns.key

    def dataset(self, skip: Iterable[str] = ()) -> "ray.data.Dataset | None":
        """The rows whose key is not in `skip`; None when none can be left (image inputs)."""
        if self.columns is None:
            return read_images(self.source, skip, self.num_cpus, self.job.preprocess_batch_size)
        return self._table.map_batches(
            normalise_table_rows,
            fn_kwargs={"columns": self.columns, "skip": key_hashes(skip)},
            batch_format="pyarrow",
            num_cpus=self.num_cpus,
        )
