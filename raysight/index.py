"""Vector index files: built offline by the index job, searched online by /search.

An index is a folder, local or in object storage (s3://bucket/prefix): `index.faiss` (inner product over L2-normalised vectors, so scores are
cosine similarities), `ids.json` (row -> id or path) and `meta.json` (model, dim, kind).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from raysight.errors import ConfigError, InvalidRequest
from raysight.paths import is_uri

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

    def save(self, folder: str | Path) -> str:
        """Write the index folder: a local path or an object-storage URI (s3://bucket/prefix)."""
        import faiss

        from raysight import storage

        folder = str(folder)
        if not is_uri(folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
        storage.write_bytes(storage.join(folder, INDEX_FILE),
                            faiss.serialize_index(self.index).tobytes())
        storage.write_bytes(storage.join(folder, IDS_FILE), json.dumps(self.ids).encode("utf-8"))
        storage.write_bytes(storage.join(folder, META_FILE),
                            json.dumps(self.meta, indent=2).encode("utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "VectorIndex":
        """Read an index folder from a local path or an object-storage URI. Its three files
        are read as bytes, so nothing is written to local disk on the way."""
        import faiss
        import numpy as np

        from raysight import storage

        folder = str(folder)
        files: dict[str, bytes] = {}
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            try:
                files[name] = storage.read_bytes(storage.join(folder, name))
            except (FileNotFoundError, IsADirectoryError):
                pass
        missing = [n for n in (INDEX_FILE, IDS_FILE, META_FILE) if n not in files]
        shown = storage.redact(folder)
        if missing:
            raise ConfigError(
                f"{shown} is not a raysight index folder (missing {', '.join(missing)}); "
                "build one with `python -m batch_jobs.index`"
            )
        index = faiss.deserialize_index(np.frombuffer(files[INDEX_FILE], dtype="uint8"))
        ids = json.loads(files[IDS_FILE].decode("utf-8"))
        meta = json.loads(files[META_FILE].decode("utf-8"))
        if index.ntotal != len(ids):
            raise ConfigError(f"{shown}: index has {index.ntotal} rows but {len(ids)} ids")
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
