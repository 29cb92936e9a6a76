"""Build a vector index from embed output: `python -m batch_jobs.index --help`.

    run_index("vectors/", "shapes-index/")                      # from an embed job's output
    run_index("photos/", "shapes-index/", model="builtin:shapes-clip")   # embed, then index

The index folder is the shared core's (`raysight.index.VectorIndex`): index.faiss, ids.json
(row -> path or id) and meta.json; `/search` online loads it. 'flat' is exact search; 'ivf'
is approximate, for millions of vectors. With --model the embeddings are written (and
resumed) under OUTPUT/embeddings first.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from raysight.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from batch_jobs.pipeline import JobSummary

EMBEDDINGS_SUBFOLDER = "embeddings"


@dataclass
class IndexSummary:
    """What the index job built; `embed` is the embed run's summary when it ran one."""

    output: str
    rows: int
    skipped: int  # rows of the embed output that had no vector (their error is in the output)
    dim: int
    kind: str
    model: str | None
    seconds: float
    embed: "JobSummary | None" = None

    def format(self) -> str:
        lines = [self.embed.format()] if self.embed else []
        lines.append(
            f"index: {self.rows} vectors (dim {self.dim}, {self.kind}) in {self.seconds:.1f} s "
            f"-> {self.output}; {self.skipped} rows without a vector skipped"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def load_embeddings(folder: str) -> tuple["np.ndarray", list[str], str | None, int]:
    """(vectors [n, dim], ids, model, rows skipped) from an embed job's output folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from batch_jobs.writer import MANIFEST_FILE, OutputFolder

    output = OutputFolder(folder)
    manifest = output.read_json(MANIFEST_FILE) or {}
    parts = output.part_files()
    if manifest.get("job") != "embed" or not parts:
        raise ConfigError(
            f"{folder} is not the output of an embed job (no {MANIFEST_FILE} with job 'embed', "
            "or no part files); run `python -m batch_jobs.embed` first, or give --model"
        )
    key = manifest.get("key", "path")
    table = pa.concat_tables(
        pq.read_table(p, columns=[key, "embedding", "error"], filesystem=output.filesystem)
        for p in parts
    )
    good = table.filter(pc.and_(pc.is_null(table["error"]), pc.is_valid(table["embedding"])))
    if good.num_rows == 0:
        raise ConfigError(f"{folder} has no rows with an embedding to index")
    vectors = good["embedding"].combine_chunks()
    lengths = pc.list_value_length(vectors)
    dim = pc.min(lengths).as_py()
    if dim != pc.max(lengths).as_py():
        raise ConfigError(f"{folder} mixes vectors of different sizes; was it written by one model?")
    matrix = np.asarray(vectors.flatten(), dtype=np.float32).reshape(good.num_rows, dim)
    ids = [str(value) for value in good[key].to_pylist()]
    return matrix, ids, manifest.get("model"), table.num_rows - good.num_rows


def build_index(embeddings: str, output: str, *, kind: str = "flat", nlist: int | None = None) -> IndexSummary:
    """Index the vectors of an embed output folder into the index folder `output`."""
    from raysight.index import VectorIndex

    started = time.perf_counter()
    vectors, ids, model, skipped = load_embeddings(embeddings)
    index = VectorIndex.build(vectors, ids, kind=kind, nlist=nlist, model=model)
    index.save(output.removeprefix("file://"))
    return IndexSummary(
        output=output, rows=len(ids), skipped=skipped, dim=index.dim, kind=kind, model=model,
        seconds=round(time.perf_counter() - started, 3),
    )


def run_index(input: str, output: str, *, model=None, kind: str = "flat", nlist: int | None = None,
              **embed_options) -> IndexSummary:
    """Index an embed output folder, or with `model`, embed the images at `input` first."""
    if model is None:
        if embed_options:
            raise ConfigError(f"{', '.join(embed_options)} only apply when `model` is given")
        return build_index(input, output, kind=kind, nlist=nlist)
    from batch_jobs.embed import run_embed

    embeddings = posixpath.join(output, EMBEDDINGS_SUBFOLDER)
    summary = run_embed(model, input, embeddings, **embed_options)
    result = build_index(embeddings, output, kind=kind, nlist=nlist)
    result.embed = summary
    return result


def index_from_arguments(args) -> IndexSummary:
    """The index command once its flags (the registry's) are parsed: index an embed output,
    or with --model (or --config) embed the images first, into OUTPUT/embeddings."""
    from batch_jobs import cli, pipeline

    if not (args.model or args.config):
        return build_index(args.input, args.output, kind=args.index_type, nlist=args.nlist)
    index_folder = args.output
    args.output = posixpath.join(index_folder, EMBEDDINGS_SUBFOLDER)
    embed = pipeline.run_job(cli.job_config_from_arguments("embed", args))
    summary = build_index(args.output, index_folder, kind=args.index_type, nlist=args.nlist)
    summary.embed = embed
    return summary


def main(argv: list[str] | None = None) -> int:
    from batch_jobs.cli import main as job_main

    return job_main("index", argv)


if __name__ == "__main__":
    sys.exit(main())
