"""Hostile rows in an offline job: one embed run on the shared local Ray over a Parquet table
holding every kind of bad row next to good ones. Each bad row fails alone with its reason (the
`error` column names what is wrong), every good row gets its vector, and the job finishes. The
caption (ask) and classify jobs' bad rows through their own CPU stage, as Ray calls it.

Lone surrogates have no row here: Arrow refuses them when a Parquet, CSV or JSONL file is
written or read, so no table can carry one to a job."""

from __future__ import annotations

import base64
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysight.builtin import BUILTIN_MODELS
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration

CLIP = "builtin:shapes-clip"
LONG = 131_073  # over 4096 tokens (max_text_tokens) x 32 characters per token


def bad_rows(folder: Path) -> list[tuple[str, str | None, str | None, str]]:
    """(id, image, text, words its error must contain) for each bad row; files under folder."""
    from PIL import Image

    from raysight.shapes import make_shapes

    good = png_bytes(make_shapes(1, seed=3)[0][0])
    files = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "notes.png": b"these are notes, not an image\n",
        "bomb.png": png_bytes(Image.new("1", (8000, 8000))),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "a-folder.png").mkdir()
    return [
        ("corrupt", "corrupt.png", None, "not an image"),
        ("truncated", "truncated.png", None, "truncated or damaged"),
        ("empty", "empty.png", None, "empty"),
        ("not-an-image", "notes.png", None, "not an image"),
        ("bomb", "bomb.png", None, "pixels"),
        ("missing", "no-such-file.png", None, "not found"),
        ("a-folder", "a-folder.png", None, "not found"),
        ("path-trick", "../../../../../../etc/hostname", None, "not an image"),
        ("metadata-url", "http://169.254.169.254/latest/meta-data/", None, "allow_urls"),
        ("gopher-url", "gopher://127.0.0.1:6379/_INFO", None, "gopher"),
        ("bad-data-url", "data:image/png;base64,@@@@", None, "base64"),
        ("over-long-text", None, "x" * LONG, "max_text_tokens"),
        ("blank-text", None, " \t ", "non-empty"),
        ("nothing", None, None, "neither an image nor a text"),
    ]


def good_rows(folder: Path) -> list[tuple[str, str | None, str | None]]:
    from PIL import Image

    from raysight.shapes import make_shapes

    rows = []
    for number, (image, _) in enumerate(make_shapes(4, seed=8)):
        (folder / f"good-{number}.png").write_bytes(png_bytes(image))
        rows.append((f"good-{number}", f"good-{number}.png", None))
    (folder / "huge.png").write_bytes(png_bytes(Image.new("RGB", (6000, 4000), "blue")))
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(make_shapes(
        1, seed=4)[0][0])).decode()
    return rows + [("huge-but-allowed", "huge.png", None), ("data-url", data_url, None),
                   ("text", None, "a red circle"), ("nul-text", None, "a \u0000 blue square"),
                   ("long-but-allowed-text", None, "a green triangle " * 1000)]


def test_every_bad_row_fails_with_its_reason_and_every_good_row_is_embedded(ray_session,
                                                                             tmp_path):
    from batch_jobs import run_embed

    if not (BUILTIN_MODELS["shapes-clip"] / "model.safetensors").is_file():
        pytest.skip("the built-in shapes-clip is not built")
    images = tmp_path / "images"
    images.mkdir()
    bad, good = bad_rows(images), good_rows(images)
    rows = [(name, image, text) for name, image, text, _ in bad] + good
    table = pa.table({"id": [row[0] for row in rows], "image": [row[1] for row in rows],
                      "text": [row[2] for row in rows]})
    pq.write_table(table, tmp_path / "rows.parquet")
    summary = run_embed(CLIP, str(tmp_path / "rows.parquet"), str(tmp_path / "out"),
                        image_root=str(images), progress=False)
    out = {row["id"]: row for row in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(out) == sorted(row[0] for row in rows)  # every row once, the job finished
    problems = []
    for name, _, _, words in bad:
        error = out[name]["error"]
        if error is None or words not in error or out[name]["embedding"] is not None:
            problems.append(f"{name}: error {error!r} lacks {words!r}")
    for name, _, text in good:
        row = out[name]
        if row["error"] is not None or len(row["embedding"] or []) == 0:
            problems.append(f"{name}: {row['error']!r}")
        elif row["kind"] != ("text" if text else "image"):
            problems.append(f"{name}: kind {row['kind']}")
    assert not problems, "\n".join(problems)
    assert summary.rows == len(rows) and summary.failures == len(bad)
    print(f"\n{len(bad)} bad rows failed with reasons {summary.failure_reasons}; "
          f"{len(good)} good rows embedded")


def test_ask_and_classify_rows_fail_alone_in_the_cpu_stage(tmp_path):
    """The caption (ask) and classify jobs' own CPU stage over bad rows next to good ones, as
    Ray calls it on a batch: an over-long per-row prompt, a corrupt image, an image column of
    the wrong type (a Parquet column has one type, so every row of such a table fails), a job
    with more labels than max_labels_per_request each fail their row with the reason."""
    from batch_jobs.config import job_config_for
    from batch_jobs.stages import PreprocessStage
    from raysight.shapes import make_shapes

    if not (BUILTIN_MODELS["shapes-vlm"] / "model.safetensors").is_file():
        pytest.skip("the built-in models are not built")
    good = png_bytes(make_shapes(1, seed=2)[0][0])
    ask = PreprocessStage(job_config_for("caption", "builtin:shapes-vlm", str(tmp_path)))
    out = ask(pa.table({"id": ["good", "nul", "long", "corrupt", "no-image"],
                        "image": [good, good, good, good[: len(good) // 2], None],
                        "prompt": ["what shape?", "what\u0000shape?", "x" * LONG, "what?",
                                   "what?"]})).to_pylist()
    errors = {row["id"]: row["error"] for row in out}
    assert errors["good"] is None and errors["nul"] is None
    assert "131,073 characters" in errors["long"] and "max_text_tokens" in errors["long"]
    assert "truncated or damaged" in errors["corrupt"]
    assert errors["no-image"] == "this row has no image"
    assert [row["prepared"] is not None for row in out] == [True, True, False, False, False]

    labels = tuple(f"label {n}" for n in range(257))
    many = PreprocessStage(job_config_for("classify", CLIP, str(tmp_path), labels=labels))
    out = many(pa.table({"id": ["a"], "image": [good]})).to_pylist()
    assert out[0]["error"] == ("257 labels in one request; the limit is 256 "
                               "(max_labels_per_request); split the labels over several requests")
    out = many(pa.table({"id": ["a", "b"], "image": pa.array([3, 4**20])})).to_pylist()
    assert [row["error_type"] for row in out] == ["ImageError"] * 2
    assert all(row["error"] == "the image column holds a int; expected bytes, a path or an URL"
               for row in out)
