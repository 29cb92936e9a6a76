"""Caption and ask jobs on the shared local Ray, with the built-in shapes VLM."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysight.builtin import BUILTIN_MODELS
from raysight.shapes import QUESTIONS, write_shapes_folder

pytestmark = pytest.mark.integration

VLM = "builtin:shapes-vlm"
IMAGES = 200
CORRUPT = 3


def _require_builtin(name: str) -> None:
    if not (BUILTIN_MODELS[name] / "model.safetensors").is_file():
        pytest.skip(f"built-in model {name} is not trained yet (python -m raysight.builtin.train {name})")


def read_labels(folder: Path) -> dict[str, dict]:
    """labels.csv rows by absolute path, the key the jobs write."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return {str(folder / row["path"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "images", IMAGES, seed=11,
                               corrupt=CORRUPT)


@pytest.fixture(scope="module")
def captions(ray_session, shapes, tmp_path_factory):
    """One caption run over the folder: (summary, output table as rows by path)."""
    from batch_jobs import run_caption

    _require_builtin("shapes-vlm")
    output = tmp_path_factory.mktemp("captions") / "out"
    summary = run_caption(VLM, str(shapes), str(output), rows_per_file=64, progress=False)
    rows = pq.read_table(output).to_pylist()
    return summary, {row["path"]: row for row in rows}


def test_every_image_gets_one_row_and_broken_files_get_reasons(captions, shapes):
    summary, rows = captions
    labels = read_labels(shapes)
    assert sorted(rows) == sorted(labels)  # every input file exactly once, keyed by its path
    failed = {path: row for path, row in rows.items() if row["error"] is not None}
    assert sorted(failed) == sorted(p for p, label in labels.items() if label["corrupt"] == "true")
    assert {row["error_type"] for row in failed.values()} == {"CorruptImage", "NotAnImage", "EmptyImage"}
    assert all(row["text"] is None and row["error"] for row in failed.values())
    assert summary.rows == IMAGES + CORRUPT and summary.failures == CORRUPT
    assert summary.failure_reasons == {"CorruptImage": 1, "NotAnImage": 1, "EmptyImage": 1}
    assert summary.images_per_s > 0 and summary.output_rows == IMAGES + CORRUPT


def test_captions_match_the_drawn_shapes(captions, shapes):
    _, rows = captions
    labels = read_labels(shapes)
    drawn = {path: label["caption"] for path, label in labels.items() if label["corrupt"] == "false"}
    right = sum(rows[path]["text"] == caption for path, caption in drawn.items())
    assert right / len(drawn) >= 0.9, f"{right}/{len(drawn)} captions match the drawn shape"


def test_offline_captions_equal_the_online_engine(captions, shapes):
    """The same bytes through `engine.run` in this process give the same text."""
    from raysight.engines import build_engine
    from raysight.engines.generate import GenerateRequest
    from raysight.spec import ModelSpec

    _, rows = captions
    engine = build_engine(ModelSpec(model=VLM))
    paths = sorted(p for p, row in rows.items() if row["error"] is None)[::4]  # 50 images
    answers = engine.run([GenerateRequest.from_prompt(None, Path(p).read_bytes()) for p in paths])
    assert [a.text for a in answers] == [rows[p]["text"] for p in paths]


def test_ask_reads_a_table_with_relative_paths_and_a_prompt_per_row(ray_session, shapes, tmp_path):
    """VQA from a CSV: relative image paths, an id column, one question per row."""
    from batch_jobs import run_caption

    _require_builtin("shapes-vlm")
    labels = [row for row in read_labels(shapes).values() if row["corrupt"] == "false"][:40]
    table = tmp_path / "questions.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "prompt"])
        for number, row in enumerate(labels):
            asked = "color" if number % 2 else "shape"
            writer.writerow([f"q{number}-{asked}", row["path"], QUESTIONS[asked]])
        writer.writerow(["missing", "no_such_image.png", QUESTIONS["shape"]])
    output = tmp_path / "answers"
    summary = run_caption(VLM, str(table), str(output), image_root=str(shapes), progress=False)
    answers = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert len(answers) == len(labels) + 1 and summary.failures == 1
    assert "not found" in answers["missing"]["error"]
    right = 0
    for number, row in enumerate(labels):
        asked = "color" if number % 2 else "shape"
        answer = answers[f"q{number}-{asked}"]
        assert answer["prompt"] == QUESTIONS[asked] and answer["path"] == row["path"]
        right += answer["text"] == row[asked]
    assert right / len(labels) >= 0.9, f"{right}/{len(labels)} answers right"
