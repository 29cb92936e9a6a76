"""Inputs (listing, tables, keys) and outputs (atomic parts, manifest, resume), without Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysight.errors import ConfigError

from batch_jobs.config import job_config_for
from batch_jobs.readers import key_hashes, normalise_table_rows, resolve_input, table_columns
from batch_jobs.writer import MANIFEST_FILE, OutputFolder, PartFileDatasink


def job(input, kind="caption", **options):
    return job_config_for(kind, "builtin:shapes-vlm", str(input), None, **options)


def test_a_folder_lists_its_images_sorted_and_skips_hidden_files(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "labels.csv", "sub/c.webp", ".hidden/d.png", "_x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = resolve_input(job(tmp_path))
    assert source.format == "images"
    assert source.files == tuple(str(tmp_path / n) for n in ("a.JPG", "b.png", "sub/c.webp"))


def test_a_glob_picks_matching_files(tmp_path):
    for name in ("x/1.png", "x/2.jpg", "y/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = resolve_input(job(f"{tmp_path}/*/*.png"))
    assert source.files == (str(tmp_path / "x/1.png"), str(tmp_path / "y/3.png"))


def test_tables_are_recognised_and_bad_inputs_explained(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"image": "a.png"}\n')
    source = resolve_input(job(tmp_path / "rows.jsonl"))
    assert source.format == "json" and source.image_root == str(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_input(job(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot tell what"):
        resolve_input(job(tmp_path / "empty"))


def test_table_keys_come_from_the_id_column_or_the_image_path():
    by_id = table_columns(["id", "image", "prompt"], job("t.csv"), image_is_text=True)
    assert (by_id.key, by_id.prompt) == ("id", "prompt")
    by_path = table_columns(["image"], job("t.csv"), image_is_text=True)
    assert by_path.key == "path" and by_path.key_source == "image"
    with pytest.raises(ConfigError, match="--id-column"):
        table_columns(["image"], job("t.parquet"), image_is_text=False)
    with pytest.raises(ConfigError, match="no image column 'picture'"):
        table_columns(["id", "image"], job("t.csv", image_column="picture"), image_is_text=True)
    texts = table_columns(["id", "text"], job("t.csv", "embed"), image_is_text=False)
    assert texts.text == "text" and texts.image == ""


def test_normalised_rows_drop_the_keys_already_done():
    columns = table_columns(["id", "image", "text"], job("t", "embed"), image_is_text=True)
    table = pa.table({"id": [1, 2, 3], "image": ["a.png", None, "c.png"], "text": [None, "hi", None]})
    out = normalise_table_rows(table, columns, key_hashes(["2", "9"]))
    assert out.to_pylist() == [
        {"id": "1", "image": "a.png", "path": "a.png", "text": None},
        {"id": "3", "image": "c.png", "path": "c.png", "text": None},
    ]


def _write(sink, rows, task_idx):
    table = pa.table({"path": [f"p{i}" for i in rows], "text": ["t"] * len(rows),
                      "error": [None] * (len(rows) - 1) + ["bad"],
                      "error_type": [None] * (len(rows) - 1) + ["CorruptImage"]})
    return sink.write([table], SimpleNamespace(task_idx=task_idx))


def test_parts_appear_whole_and_count_their_failures(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    folder.prepare({"job": "caption", "model": "m", "key": "path"}, overwrite=False)
    sink = PartFileDatasink(str(tmp_path / "out"), "run1", rows_per_file=10)
    result = _write(sink, range(5), task_idx=3)
    assert result == {"rows": 5, "file": "part-run1-00003.parquet",
                      "failures": {"CorruptImage": 1}, "examples": {"CorruptImage": "bad"}}
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(("part", ".tmp"))] == [
        "part-run1-00003.parquet"]
    assert folder.read_column("path") == ["p0", "p1", "p2", "p3", "p4"]
    assert sink.write([], SimpleNamespace(task_idx=4))["rows"] == 0


def test_a_resumed_folder_must_hold_the_same_job(tmp_path):
    output = tmp_path / "out"
    folder = OutputFolder(str(output))
    manifest = {"job": "caption", "model": "m", "key": "path", "prompt": None}
    folder.prepare(manifest, overwrite=False)
    _write(PartFileDatasink(str(output), "run1", 10), range(3), task_idx=0)
    (output / ".tmp-part-run1-00001.parquet").write_bytes(b"half")
    (output / "keep-me.txt").write_text("not ours")

    folder.prepare(manifest, overwrite=False)  # same job: resume, temporaries removed
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST_FILE, "keep-me.txt",
                                                       "part-run1-00000.parquet"]
    with pytest.raises(ConfigError, match="prompt: None -> 'What shape is this"):
        folder.prepare({**manifest, "prompt": "What shape is this?"}, overwrite=False)

    folder.prepare({**manifest, "prompt": "What shape is this?"}, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST_FILE, "keep-me.txt"]
    assert json.loads((output / MANIFEST_FILE).read_text())["prompt"] == "What shape is this?"
    assert folder.read_column("path") == []


def test_the_index_job_reads_embed_output(tmp_path):
    from batch_jobs.index import build_index, load_embeddings

    output = tmp_path / "vectors"
    OutputFolder(str(output)).prepare({"job": "embed", "model": "m", "key": "id"}, overwrite=False)
    vectors = [[1.0, 0.0], None, [0.0, 1.0]]
    pq.write_table(pa.table({
        "id": ["a", "b", "c"], "embedding": pa.array(vectors, pa.list_(pa.float32())),
        "error": [None, "broken", None],
    }), output / "part-x-00000.parquet")
    matrix, ids, model, skipped = load_embeddings(str(output))
    assert matrix.shape == (2, 2) and ids == ["a", "c"] and model == "m" and skipped == 1
    summary = build_index(str(output), str(tmp_path / "index"))
    from raysight.index import VectorIndex

    hits = VectorIndex.load(tmp_path / "index").search([0.0, 1.0], k=1)[0]
    assert hits[0].id == "c" and summary.rows == 2 and summary.dim == 2
    with pytest.raises(ConfigError, match="not the output of an embed job"):
        load_embeddings(str(tmp_path))
