"""Vector index files: built offline by the index job, searched online by /search.

An index is a folder: `index.faiss` (inner product over L2-normalised vectors, so scores are
cosine similarities), `ids.json` (row -> id or path) and `meta.json` (model, dim, kind).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from raysight.errors import ConfigError, InvalidRequest

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
KINDS = ("flat", "ivf")


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float


class VectorIndex:
    """A FAISS index with the ids of its rows."""

    def __init__(self, index, ids: list[str], meta: dict):
        self.index = index
        self.ids = ids
        self.meta = meta

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        vectors,
        ids: Sequence[str],
        *,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int = 8,
        model: str | None = None,
    ) -> "VectorIndex":
        """Index `vectors` [n, dim]. 'flat' is exact; 'ivf' is approximate, for large n."""
        import faiss
        import numpy as np

        vectors = np.ascontiguousarray(np.asarray(vectors, dtype="float32"))
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ConfigError("an index needs a non-empty [n, dim] array of vectors")
        if len(ids) != len(vectors):
            raise ConfigError(f"{len(vectors)} vectors but {len(ids)} ids")
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
        faiss.normalize_L2(vectors)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            # ~sqrt(n) lists is FAISS's rule of thumb; each needs some training points.
            nlist = nlist or max(1, min(int(len(vectors) ** 0.5), len(vectors) // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(nprobe, nlist)
        index.add(vectors)
        meta = {"kind": kind, "dim": dim, "count": len(ids), "model": model, "metric": "cosine"}
        return cls(index, [str(i) for i in ids], meta)

    def save(self, folder: str | Path) -> Path:
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        (folder / IDS_FILE).write_text(json.dumps(self.ids), encoding="utf-8")
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "VectorIndex":
        import faiss

        folder = Path(folder)
        missing = [n for n in (INDEX_FILE, IDS_FILE, META_FILE) if not (folder / n).is_file()]
        if missing:
            raise ConfigError(
                f"{folder} is not a raysight index folder (missing {', '.join(missing)}); "
                "build one with `python -m batch_jobs.index`"
            )
        index = faiss.read_index(str(folder / INDEX_FILE))
        ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if index.ntotal != len(ids):
            raise ConfigError(f"{folder}: index has {index.ntotal} rows but {len(ids)} ids")
        return cls(index, ids, meta)

    def search(self, queries, k: int = 5) -> list[list[SearchHit]]:
        """Top-k hits (best first) for each query vector in `queries` [n, dim] or [dim]."""
        import faiss
        import numpy as np

        if k < 1:
            raise InvalidRequest("k must be at least 1")
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype="float32")))
        if queries.shape[1] != self.dim:
            raise InvalidRequest(
                f"query vectors have {queries.shape[1]} dimensions; this index has {self.dim} "
                "(was it built with the same model?)"
            )
        faiss.normalize_L2(queries)
        scores, rows = self.index.search(queries, min(k, len(self.ids)))
        return [
            [SearchHit(self.ids[r], float(s)) for s, r in zip(score_row, row) if r >= 0]
            for score_row, row in zip(scores, rows)
        ]
