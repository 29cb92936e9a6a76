"""`ray job submit --working-dir . -- python -m batch_jobs.caption ...` against a cluster this
test starts with `ray start --head`, on its own ports and temp dir so it never meets the
session's Ray or anyone else's. Only this cluster's processes are stopped at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysight.shapes import write_shapes_folder
from tests.integration.ray_head import free_ports, pids_naming

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head_cluster():
    """A `ray start --head --block` cluster with 2 CPUs; yields its dashboard address."""
    # A short path: Ray's unix sockets live under it and their paths are length-limited.
    temp_dir = tempfile.mkdtemp(prefix="rsjob-", dir="/tmp")
    ports = free_ports(10)
    flags = dict(zip(
        ("--port", "--dashboard-port", "--node-manager-port", "--object-manager-port",
         "--ray-client-server-port", "--dashboard-agent-listen-port",
         "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"),
        ports,
    ))
    command = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
               "--temp-dir", temp_dir, "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               "--disable-usage-stats",
               # Workers on ports the OS picks, not the default range the session's Ray uses.
               "--min-worker-port=0", "--max-worker-port=0"]
    command += [f"{flag}={port}" for flag, port in flags.items()]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           # No Serve replicas to drain: stop at once when told to.
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{flags['--dashboard-port']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-2000:]
            try:
                # The head runs with the session's token auth (tests/integration/conftest.py).
                probe = urllib.request.Request(
                    f"{address}/api/version",
                    headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
                urllib.request.urlopen(probe, timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the head node did not come up in 90 s"
                time.sleep(0.5)
        yield address, env
    finally:
        # SIGTERM to `ray start --block` stops the processes it started; then make sure.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        time.sleep(1)
        for pid in pids_naming(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_caption_job_runs_under_ray_job_submit(head_cluster, tiny_models, tmp_path):
    address, env = head_cluster
    images = write_shapes_folder(tmp_path / "images", 40, seed=3, corrupt=1)
    output = tmp_path / "captions"
    command = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
        "--", "python", "-m", "batch_jobs.caption", "--model", tiny_models["blip"],
        "--input", str(images), "--output", str(output), "--max-new-tokens", "6", "--json",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert "succeeded" in logs
    summary = json.loads(next(line for line in logs.splitlines() if line.startswith('{"')))
    assert summary["rows"] == 41 and summary["failures"] == 1
    assert summary["plan"].startswith("model: 1 actor(s) x (1 CPU)")  # half the 2 CPUs
    table = pq.read_table(output)
    assert sorted(table["path"].to_pylist()) == sorted(str(p) for p in images.glob("*.png"))
