"""Output: Parquet part files that appear whole or not at all, and resume from them.

Each write task writes its rows to a hidden temporary file and renames it to
``part-<run>-<task>.parquet`` when it is complete, so the folder only ever holds finished
parts (plus temporaries a killed job left, removed at the next start). A re-run reads the
keys of every finished part and drops those rows before they are read or processed: a job
killed part-way and re-run ends with every input row exactly once. ``_raysight_job.json``
records what the folder holds, so resuming with another model or prompt is refused.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from typing import Any, Iterable

from ray.data import Datasink

from raysight.errors import ConfigError

from batch_jobs.readers import open_filesystem

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
MANIFEST_FILE = "_raysight_job.json"
SUMMARY_FILE = "_raysight_summary.json"
# Manifest fields a resumed run must share with the run that started the folder.
_MUST_MATCH = ("job", "model", "key", "prompt", "labels", "max_new_tokens")


class PartFileDatasink(Datasink):
    """Writes each write task's rows to one Parquet part file, atomically (write + rename)."""

    def __init__(self, output: str, run_id: str, rows_per_file: int):
        self.output = output
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        # Opened on the driver and shipped to the write tasks with the sink, so the
        # object-storage settings the driver resolved (endpoint, region) hold on every node.
        self.filesystem, self.root = open_filesystem(output)
        self.write_returns: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "WriteParts"

    def write(self, blocks: Iterable[Any], ctx) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return {"rows": 0, "failures": {}, "examples": {}, "file": None}
        table = pa.concat_tables(tables, promote_options="default")
        filesystem, root = self.filesystem, self.root
        name = f"{PART_PREFIX}{self.run_id}-{ctx.task_idx:05d}{PART_SUFFIX}"
        temporary = posixpath.join(root, f"{TEMP_PREFIX}{name}")
        pq.write_table(table, temporary, filesystem=filesystem)
        filesystem.move(temporary, posixpath.join(root, name))
        return {"rows": table.num_rows, "file": name, **_failures(table)}

    def on_write_complete(self, write_result) -> None:
        self.write_returns = [r for r in write_result.write_returns if r]


def _failures(table) -> dict:
    if "error_type" not in table.column_names:
        return {"failures": {}, "examples": {}}
    types = table["error_type"].to_pylist()
    messages = table["error"].to_pylist()
    examples: dict[str, str] = {}
    for error_type, message in zip(types, messages):
        if error_type and error_type not in examples:
            examples[error_type] = message
    return {"failures": dict(Counter(t for t in types if t)), "examples": examples}


class OutputFolder:
    """The job's output folder: its part files, its manifest, and what is already done."""

    def __init__(self, output: str):
        self.output = output
        self.filesystem, self.root = open_filesystem(output)

    def part_files(self) -> list[str]:
        import pyarrow.fs as pafs

        if self.filesystem.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.root))
        return sorted(
            i.path for i in infos
            if i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(PART_SUFFIX)
        )

    def prepare(self, manifest: dict, overwrite: bool) -> None:
        """Create the folder, clear it (overwrite) or check it holds the same job (resume)."""
        import pyarrow.fs as pafs

        self.filesystem.create_dir(self.root, recursive=True)
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.root))
        for info in infos:
            ours = info.base_name.startswith((PART_PREFIX, TEMP_PREFIX)) or info.base_name in (
                MANIFEST_FILE, SUMMARY_FILE)
            if info.base_name.startswith(TEMP_PREFIX) or (overwrite and ours):
                self.filesystem.delete_file(info.path)
        previous = self.read_json(MANIFEST_FILE)
        if previous and self.part_files():
            changed = [k for k in _MUST_MATCH if previous.get(k) != manifest.get(k)]
            if changed:
                details = "; ".join(f"{k}: {previous.get(k)!r} -> {manifest.get(k)!r}" for k in changed)
                raise ConfigError(
                    f"{self.output} already holds output of a different job ({details}). "
                    "Write to a new --output, or pass --overwrite to replace it"
                )
        self.write_json(MANIFEST_FILE, manifest)

    def read_column(self, column: str) -> list:
        """One column of every finished part, in file order."""
        import pyarrow.parquet as pq

        values: list = []
        for path in self.part_files():
            table = pq.read_table(path, columns=[column], filesystem=self.filesystem)
            values.extend(table[column].to_pylist())
        return values

    def read_json(self, name: str) -> dict | None:
        path = posixpath.join(self.root, name)
        try:
            with self.filesystem.open_input_stream(path) as stream:
                return json.loads(stream.read().decode("utf-8"))
        except FileNotFoundError:
            return None

    def write_json(self, name: str, data: dict) -> None:
        path = posixpath.join(self.root, name)
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
