"""The processes this one started (Linux /proc), so the demo can show that Ray left none."""

from __future__ import annotations

import os
import time


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (2nd field) may hold spaces and parentheses: split after the last ')'.
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def descendants(pid: int | None = None) -> set[int]:
    """Pids of every process below `pid` (default: this one); empty where /proc is missing."""
    if not os.path.isdir("/proc"):
        return set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    found: set[int] = set()
    waiting = [pid or os.getpid()]
    while waiting:
        for child in children.get(waiting.pop(), []):
            if child not in found:
                found.add(child)
                waiting.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has exited; only its entry remains


def wait_until_gone(pids: set[int], timeout_s: float) -> set[int]:
    """Wait up to `timeout_s` for `pids` to exit; return those still running."""
    deadline = time.monotonic() + timeout_s
    running = {pid for pid in pids if alive(pid)}
    while running and time.monotonic() < deadline:
        time.sleep(0.2)  # exits come with no signal to wait on here: poll
        running = {pid for pid in running if alive(pid)}
    return running
