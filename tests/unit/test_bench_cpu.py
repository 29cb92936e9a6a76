"""The bench's CPU per request outside the model replica is read over the steady-state windows
only (bench/loadgen.py reads the processes' CPU as the windows open and close;
bench/online.py divides the overhead processes' cores by the windows' throughput)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.bounds import _process_group, _remember
from bench.loadgen import cpu_seconds_of
from bench.online import _cpu_outside_replica_steady

# Burns `argv[1]` CPU seconds once a line comes on stdin, then sleeps.
BURN = "import sys, time\nsys.stdin.readline()\nend = time.process_time() + float(sys.argv[1])\n" \
       "while time.process_time() < end: pass\ntime.sleep(600)"


@pytest.mark.timeout(30)
def test_cpu_seconds_of_reads_each_process_and_skips_those_gone():
    burner = subprocess.Popen([sys.executable, "-c", BURN, "0.4"], stdin=subprocess.PIPE)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        time.sleep(1.0)  # both started (an interpreter's start costs CPU of its own)
        before = cpu_seconds_of((burner.pid, sleeper.pid, gone.pid))
        burner.stdin.write(b"go\n")
        burner.stdin.flush()
        time.sleep(2.0)  # the burner spends its 0.4 s of CPU meanwhile, even on a busy machine
        after = cpu_seconds_of((burner.pid, sleeper.pid, gone.pid))
    finally:
        burner.kill()
        sleeper.kill()
    assert set(before) == set(after) == {burner.pid, sleeper.pid}
    assert after[burner.pid] - before[burner.pid] >= 0.2
    assert after[sleeper.pid] - before[sleeper.pid] < 0.05


def test_steady_cpu_per_request_counts_only_the_processes_outside_the_replica():
    groups = {11: "serve proxy", 12: "ray gcs", 13: "model replica", 14: "load generator",
              15: "serve controller"}
    result = {"measured_s": 4.0,
              "steady_cpu": {"11": 0.3, "12": 0.06, "13": 7.2, "14": 0.2, "15": 0.04,
                             "99": 5.0}}  # 99: not a process of this run
    windows = [{"requests_per_s": 14.0}, {"requests_per_s": 16.0}, {"requests_per_s": 17.0}]
    got = _cpu_outside_replica_steady(result, groups, windows, clients=32)
    # (0.3 + 0.06 + 0.04) CPU-s over 4 s = 0.1 cores, at the windows' median 16 requests/s.
    assert got["metric"] == "cpu_ms_outside_replica" and got["clients"] == 32
    assert got["cores"] == pytest.approx(0.1)
    assert got["requests_per_s"] == 16.0
    assert got["value"] == pytest.approx(6.25)


RAYLET = "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s"
STARTING = ("/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/_private/workers/"
            "default_worker.py --node-ip-address=127.0.0.1 --raylet-name=/tmp/ray/sockets/raylet")


def test_ray_daemons_are_told_by_their_program_and_a_starting_worker_is_not_the_raylet():
    assert _process_group(RAYLET, me=1, pid=2) == "ray raylet"
    assert _process_group("/venv/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/l", 1, 2) == "ray gcs"
    # Ray's flags name the raylet: a worker still importing must not count as the raylet.
    assert _process_group(STARTING, 1, 2) == "ray worker (starting)"
    assert _process_group("ray::_StatsActor", 1, 2) == "ray data helpers"
    assert _process_group("ray::MapWorker(MapBatches(ModelStage))", 1, 2) == "job model actor"
    assert _process_group("ray::IDLE", 1, 2) == "other ray processes"
    assert _process_group("anything", me=7, pid=7) == "bench driver"


def test_a_worker_keeps_the_group_of_its_actor_not_of_its_start_or_its_idle_end():
    seen: dict = {}
    for command, seconds in [(STARTING, 0.5), ("ray::MapWorker(MapBatches(PreprocessStage))", 3.0),
                             ("ray::IDLE", 3.2)]:
        _remember(seen, {21: (command, seconds)}, me=1)
    assert seen[21] == ("job preprocess actor", 3.2)
    seen = {}
    for command, seconds in [(STARTING, 0.4), ("ray::IDLE", 1.5)]:  # a task worker
        _remember(seen, {22: (command, seconds)}, me=1)
    assert seen[22] == ("other ray processes", 1.5)
