"""The processes of a `raysight serve` session seen from outside, through /proc: which
are a deployment's replicas, their resident memory, and the CPU each Serve role has used
(bench/reliability.py kills replicas, measures their growth and splits a burst's CPU)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path


def replica_pids(session: int, deployment: str) -> list[int]:
    """Processes of `session` whose title names a replica of `deployment`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        name = title.split()[0] if title.split() else ""
        if name.startswith("ray::ServeReplica:") and (f":{deployment}." in name + "."):
            pids.append(int(entry.name))
    return pids


def cpu_by_role(session: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the session's Serve processes, by role: the
    HTTP proxy, the ingress replica, the model replicas, and the rest (Ray's own)."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent: Counter = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        role = ("proxy" if "ProxyActor" in title else
                "ingress" if title.startswith("ray::ServeReplica:") and ":ingress" in title else
                "models" if title.startswith("ray::ServeReplica:") else "ray_other")
        spent[role] += (int(fields[11]) + int(fields[12])) / ticks
    return dict(spent)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
