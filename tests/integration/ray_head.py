"""A `ray start --head` cluster of its own for a test module: free ports, its own temp dir
(so no other `ray.init()` on this machine finds it), and the environment the test gives its
nodes. Stopping it kills only the processes under its temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent
_PORT_FLAGS = ("--port", "--node-manager-port", "--object-manager-port",
               "--ray-client-server-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def pids_naming(marker: str) -> list[int]:
    """Pids of processes whose command line names `marker` (a cluster's temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@contextlib.contextmanager
def ray_head(num_cpus: int, env: dict[str, str]) -> Iterator[str]:
    """Start the head with `env` (its workers inherit it); yield its GCS address."""
    temp_dir = tempfile.mkdtemp(prefix="rshd-", dir="/tmp")
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
    command = [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
               "--num-gpus=0", "--temp-dir", temp_dir, "--include-dashboard=false",
               "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",
               *(f"{flag}={port}" for flag, port in ports.items())]
    env = {**env, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"127.0.0.1:{ports['--port']}"
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (Path(temp_dir) / "ray-start.log").read_text():
            assert head.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the head node did not come up in 90 s"
            time.sleep(0.5)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` then stops what it started
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in pids_naming(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
