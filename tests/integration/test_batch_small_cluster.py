"""A job on a cluster as small as a laptop: 2 CPUs, a Parquet table for input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysight.shapes import write_shapes_folder

pytestmark = pytest.mark.integration

# Its own Ray with 2 CPUs: the model and preprocess pools reserve 1.5 of them, so every
# other stage of the job must fit in what is left.
SCRIPT = textwrap.dedent("""
    import sys
    import ray
    from batch_jobs import run_caption

    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
    summary = run_caption("builtin:shapes-vlm", sys.argv[1], sys.argv[2], progress=False)
    print("ROWS", summary.rows, "FAILED", summary.failures)
    ray.shutdown()
""")


def test_a_parquet_job_finishes_on_two_cpus(tmp_path):
    folder = write_shapes_folder(tmp_path / "images", 24, seed=5)
    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"image": sorted(str(p) for p in folder.glob("*.png"))}), table)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(table), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROWS 24 FAILED 0" in done.stdout
    assert len(pq.read_table(tmp_path / "out")) == 24
