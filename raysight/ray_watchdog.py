"""The watchdog of one private local Ray (started by raysight/local_ray.py).

    python -m raysight.ray_watchdog RAY_ID DRIVER_PID

While the driver that started the Ray runs, it notes that Ray's processes, every second at
first, then less and less often (every ``SCAN_MAX_S`` at most: a scan reads every process on
the machine, which cost an idle server ~0.012 cores at one a second): the driver's children
that carry ``RAYSIGHT_LOCAL_RAY=RAY_ID`` in their environment (GCS, raylet, dashboard...)
and everything below them (agents, workers). When the driver closes this
process's stdin or is gone (a SIGKILLed driver closes it too: the kernel closes a dead
process's files), it ends those processes and any other carrying the marker: SIGTERM, a short
grace, then SIGKILL. The driver itself is spared (a deliberate stop leaves it running).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARKER_ENV = "RAYSIGHT_LOCAL_RAY"  # the same name as raysight.local_ray.MARKER_ENV
GRACE_S = 3.0
POLL_S = 1.0  # how often the driver is checked (cheap); the first scans come as often
SCAN_MAX_S = 15.0  # the longest gap between two scans of the Ray's processes


def wait_for_driver(driver_pid: int, ray_id: str, known: dict) -> None:
    """Return once stdin reaches EOF or the driver process is gone; meanwhile keep `known`
    (pid -> create time) up to date with the Ray's processes."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    # Ray starts its agents in the first seconds: scan often then. A process started later
    # (a worker, a replaced replica) inherits the marker, which the final sweep looks for.
    scan_every, next_scan = POLL_S, 0.0
    while True:
        try:
            # The pid check covers a driver whose pipe stayed open in a forked child.
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                return
            if time.monotonic() >= next_scan:
                remember(known, ray_processes(driver.children(), ray_id))
                next_scan = time.monotonic() + scan_every
                scan_every = min(SCAN_MAX_S, scan_every * 1.5)
        except psutil.NoSuchProcess:
            return
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            return


def is_marked(process, ray_id: str) -> bool:
    import psutil

    try:
        return process.environ().get(MARKER_ENV) == ray_id
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def ray_processes(candidates, ray_id: str) -> list:
    """The marked processes among `candidates`, and every process below them.

    Below them, because a process that rewrites its title (Ray's agents do) can overwrite
    the environment that /proc shows, marker included."""
    import psutil

    found = []
    for process in candidates:
        if is_marked(process, ray_id):
            found.append(process)
            try:
                found.extend(process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
    return found


def remember(known: dict, processes) -> None:
    import psutil

    for process in processes:
        try:
            known.setdefault(process.pid, process.create_time())
        except psutil.NoSuchProcess:
            pass


def still_running(known: dict) -> list:
    """The processes of `known` that still run (the same process: same pid and start time)."""
    import psutil

    alive = []
    for pid, created in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def sweep(ray_id: str, known: dict, spare: set[int]) -> int:
    """End the Ray's processes: those seen while the driver ran, and any process anywhere
    that carries the marker (a worker reparented to init after its raylet died). Returns how
    many there were."""
    import psutil

    def gather() -> dict:
        remember(known, ray_processes(psutil.process_iter(), ray_id))
        return {p.pid: p for p in still_running(known) if p.pid not in spare}

    processes = gather()
    for process in processes.values():
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(processes.values()), timeout=GRACE_S)
    # A raylet can still be starting a worker during the grace: look again, then SIGKILL.
    left = {p.pid: p for p in alive}
    left.update(gather())
    for process in left.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(left.values()), timeout=GRACE_S)
    return len(processes)


def main(argv: list[str]) -> int:
    ray_id, driver_pid = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF or the driver's end stops it
    known: dict[int, float] = {}
    wait_for_driver(driver_pid, ray_id, known)
    time.sleep(0.2)  # let a deliberate ray.shutdown() finish its own work first
    sweep(ray_id, known, {os.getpid(), driver_pid})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
