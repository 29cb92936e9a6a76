"""Embed -> index -> search, classify, and text embedding, with the built-in shapes CLIP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysight.builtin import BUILTIN_MODELS
from raysight.shapes import ALL_CAPTIONS, write_shapes_folder

pytestmark = pytest.mark.integration

CLIP = "builtin:shapes-clip"


def _require_clip() -> None:
    if not (BUILTIN_MODELS["shapes-clip"] / "model.safetensors").is_file():
        pytest.skip("built-in model shapes-clip is not trained yet")


def read_labels(folder: Path) -> dict[str, dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return {str(folder / row["path"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "images", 200, seed=23, corrupt=3)


@pytest.fixture(scope="module")
def clip_engine():
    from raysight.engines import build_engine
    from raysight.spec import ModelSpec

    _require_clip()
    return build_engine(ModelSpec(model=CLIP))


@pytest.fixture(scope="module")
def index_folder(ray_session, shapes, tmp_path_factory):
    from batch_jobs import run_index

    _require_clip()
    output = tmp_path_factory.mktemp("index") / "shapes-index"
    summary = run_index(str(shapes), str(output), model=CLIP, progress=False)
    assert summary.rows == 200 and summary.skipped == 3 and summary.embed.failures == 3
    return output


def test_embed_output_is_plain_parquet_with_normalised_vectors(index_folder):
    table = pq.read_table(index_folder / "embeddings")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())  # no tensor extension
    good = table.filter(pa.compute.is_null(table["error"]))
    vectors = np.array(good["embedding"].to_pylist(), dtype=np.float32)
    assert vectors.shape == (200, vectors.shape[1]) and vectors.shape[1] > 1
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert set(good["kind"].to_pylist()) == {"image"}


def test_text_query_finds_red_circles(index_folder, shapes, clip_engine):
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex

    index = VectorIndex.load(index_folder)
    assert index.meta["model"] == CLIP and len(index) == 200
    query = clip_engine.run([EmbedRequest(text="a red circle")])[0].vector
    hits = index.search(query, k=5)[0]
    labels = read_labels(shapes)
    found = [labels[hit.id]["caption"] for hit in hits]
    assert found[0] == "a red circle" and found.count("a red circle") >= 4, found


def test_image_query_finds_its_own_image_first(index_folder, shapes, clip_engine):
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex

    index = VectorIndex.load(index_folder)
    for name in ("img_00010.png", "img_00123.png"):
        path = shapes / name
        query = clip_engine.run([EmbedRequest(image=path.read_bytes())])[0].vector
        best = index.search(query, k=3)[0][0]
        assert best.id == str(path) and best.score > 0.999


def test_classify_over_the_twelve_captions(ray_session, shapes, tmp_path):
    from batch_jobs import run_classify

    _require_clip()
    summary = run_classify(CLIP, str(shapes), str(tmp_path / "out"), labels=ALL_CAPTIONS,
                           progress=False)
    rows = pq.read_table(tmp_path / "out").to_pylist()
    labels = read_labels(shapes)
    assert summary.rows == 203 and summary.failures == 3 and len(rows) == 203
    good = [row for row in rows if row["error"] is None]
    for row in good:
        assert len(row["probs"]) == 12 and abs(sum(row["probs"]) - 1.0) < 1e-4
        assert row["label"] == ALL_CAPTIONS[int(np.argmax(row["probs"]))]
    right = sum(row["label"] == labels[row["path"]]["caption"] for row in good)
    assert right / len(good) >= 0.9, f"{right}/{len(good)}"
    manifest = json.loads((tmp_path / "out" / "_raysight_job.json").read_text())
    assert manifest["labels"] == list(ALL_CAPTIONS)  # what probs[i] refers to


def test_embed_dataset_of_texts_and_image_bytes(ray_session, shapes, tmp_path, clip_engine):
    """Table rows with no image embed their text; image bytes are keyed by the id column."""
    from batch_jobs import embed_dataset
    from raysight.engines.embed import EmbedRequest

    pictures = sorted(shapes.glob("img_000[0-2]*.png"))
    table = pa.table({
        "id": [p.stem for p in pictures] + [f"text{i}" for i in range(len(ALL_CAPTIONS))],
        "image": [p.read_bytes() for p in pictures] + [None] * len(ALL_CAPTIONS),
        "text": [None] * len(pictures) + list(ALL_CAPTIONS),
    })
    pq.write_table(table, tmp_path / "mixed.parquet")
    lazy = embed_dataset(CLIP, str(tmp_path / "mixed.parquet"), progress=False)
    rows = {row["id"]: row for row in lazy.take_all()}
    assert sorted(rows) == sorted(table["id"].to_pylist())
    online = clip_engine.run([EmbedRequest(image=pictures[0].read_bytes()),
                              EmbedRequest(text=ALL_CAPTIONS[3])])
    assert rows[pictures[0].stem]["kind"] == "image" and rows["text3"]["kind"] == "text"
    assert np.allclose(rows[pictures[0].stem]["embedding"], online[0].vector, atol=1e-5)
    assert np.allclose(rows["text3"]["embedding"], online[1].vector, atol=1e-5)
