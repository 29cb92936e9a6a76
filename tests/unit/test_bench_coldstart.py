"""The cold-start benchmark ends each repeat by killing the server's whole session
(bench/coldstart.py): every process in it, also those in process groups of their own."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.coldstart import _session_members, kill_session

# A leader that starts two children, one in a process group of its own (as Ray's workers
# are), prints their pids and sleeps.
LEADER = """
import os, subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
same = subprocess.Popen(sleeper)
own = subprocess.Popen(sleeper, process_group=0)
print(same.pid, own.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_kill_session_leaves_no_process_of_the_session():
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    children = [int(pid) for pid in leader.stdout.readline().split()]
    try:
        assert set(_session_members(leader.pid)) == {leader.pid, *children}
        began = time.monotonic()
        kill_session(leader.pid)
        assert time.monotonic() - began < 5
        leader.wait(5)
        assert _session_members(leader.pid) == []
    finally:
        if leader.poll() is None:
            leader.kill()
