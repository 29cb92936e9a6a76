"""Resume: a job killed part-way and re-run ends with every input row exactly once."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysight.errors import ConfigError
from raysight.shapes import write_shapes_folder

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGES = 240


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "images", IMAGES, seed=5, corrupt=2)


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.png"))


def written_paths(output: Path) -> list[str]:
    return pq.read_table(output, columns=["path"])["path"].to_pylist()


def test_a_killed_job_resumes_to_every_row_exactly_once(ray_session, tiny_models, shapes, tmp_path):
    from batch_jobs import run_caption

    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "batch_jobs.caption", "--model", tiny_models["blip"],
        "--input", str(shapes), "--output", str(output), "--max-new-tokens", "24",
        "--rows-per-file", "16", "--batch-size", "8", "--preprocess-batch-size", "8",
        "--no-progress",
    ]
    # The driver joins the session's Ray, so killing it ends its tasks, not a cluster.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(output.glob("part-*.parquet")):
            assert driver.poll() is None, "the driver ended before writing a part file"
            assert time.monotonic() < deadline, "no part file within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    # Ray ends the dead driver's tasks within moments; a part they finish meanwhile still
    # counts as written, so wait until the folder stops changing before reading it.
    parts, stable_since = None, time.monotonic()
    while time.monotonic() - stable_since < 2.0:
        now = sorted(p.name for p in output.glob("part-*.parquet"))
        if now != parts:
            parts, stable_since = now, time.monotonic()
        time.sleep(0.1)
    before = written_paths(output)
    assert 0 < len(before) < IMAGES + 2, "the job was not killed part-way"

    summary = run_caption(tiny_models["blip"], str(shapes), str(output), max_new_tokens=24,
                          rows_per_file=64, progress=False)
    after = written_paths(output)
    assert sorted(after) == image_paths(shapes), "some rows missing or extra"
    assert max(collections.Counter(after).values()) == 1, "a row was written twice"
    assert summary.skipped == len(before) and summary.rows == IMAGES + 2 - len(before)
    assert summary.output_rows == IMAGES + 2
    assert not list(output.glob(".tmp-*")), "a temporary part file was left behind"


def test_resume_skips_finished_rows_and_cleans_up_after_a_crash(ray_session, tiny_models, shapes, tmp_path):
    """Simulated crash: one finished part and a half-written temporary are in the folder."""
    from batch_jobs import run_caption

    output = tmp_path / "out"
    model = tiny_models["blip"]
    done = image_paths(shapes)[::3]
    output.mkdir()
    (output / "_raysight_job.json").write_text(json.dumps(
        {"job": "caption", "model": model, "key": "path", "prompt": None, "labels": [],
         "max_new_tokens": 4}))
    pq.write_table(pa.table({"path": done, "text": ["earlier"] * len(done)}),
                   output / "part-crashed-00000.parquet")
    (output / ".tmp-part-crashed-00001.parquet").write_bytes(b"PAR1 half a file")

    summary = run_caption(model, str(shapes), str(output), max_new_tokens=4, progress=False)
    table = pq.read_table(output)
    after = table["path"].to_pylist()
    assert summary.skipped == len(done) and summary.rows == IMAGES + 2 - len(done)
    assert sorted(after) == image_paths(shapes) and len(set(after)) == len(after)
    kept = {p for p, text in zip(after, table["text"].to_pylist()) if text == "earlier"}
    assert kept == set(done)  # finished rows were not redone
    assert not list(output.glob(".tmp-*"))

    again = run_caption(model, str(shapes), str(output), max_new_tokens=4, progress=False)
    assert again.rows == 0 and again.skipped == IMAGES + 2  # nothing left to do

    with pytest.raises(ConfigError, match="different job"):
        run_caption(model, str(shapes), str(output), prompt="What shape is this?",
                    max_new_tokens=4, progress=False)
