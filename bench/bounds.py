"""Figures that show what bounds the online targets against the Flask baseline.

- `generation_split`: a batched ``generate`` timed with 16 new tokens and with 1 (the
  vision tower and the prompt's prefill, which are compute-bound and gain little from
  batching), at batch 1 and at the largest batch. From them, the tokens/s that batch would
  reach if decoding cost nothing: no server can pass that on this machine.
- `embeddings_cpu_split`: where the machine's cores go while raysight serves 32 embedding
  clients (CPU seconds per process group over wall seconds, read from /proc): the model
  replica's share is what the forward gets; the rest is HTTP, Serve's proxy, the ingress,
  Ray's own processes and the load generator. `offline_cpu_split` is the same for the
  embed job: its model actor against its preprocess actor, Ray Data's executor (in the
  driver) and Ray's helper processes.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from bench.inprocess import EngineRunner, Measured
from bench.report import median_row, row

GENERATION = "generation_split"
CPU = "embeddings_cpu_split"


def generation_split(full: dict[int, list[Measured]], first_token: EngineRunner,
                     repeats: int, window_s: float) -> list[dict]:
    """ms per batch of the full chats (`full`: batch size -> the ceiling's runs of it) and
    of the same chats with 1 new token (`first_token`, `repeats` runs per batch size), per
    batch size; the prefill's share of the batch; and the tokens/s of that batch if its
    decoding steps cost nothing."""
    rows: list[dict] = []
    for batch, runs in sorted(full.items()):
        whole = [1000 * batch / done.items_per_s for done in runs]
        tokens = [done.tokens_per_s / done.items_per_s for done in runs]  # per request
        prefill = [1000 * batch / first_token.measure(batch, window_s).items_per_s
                   for _ in range(repeats)]
        variant = f"batch {batch}"
        whole_ms, prefill_ms = statistics.median(whole), statistics.median(prefill)
        rows += [
            median_row(GENERATION, variant, "generate_ms", whole, unit="ms", batch=batch,
                       new_tokens=round(statistics.median(tokens), 2)),
            median_row(GENERATION, variant, "prefill_ms", prefill, unit="ms", batch=batch),
            row(GENERATION, variant, "prefill_share", round(prefill_ms / whole_ms, 3),
                batch=batch),
            row(GENERATION, variant, "tok_s_free_decode",
                round(batch * statistics.median(tokens) / (prefill_ms / 1000), 1),
                unit="tok/s", batch=batch),
        ]
    return rows


# A Ray worker before it names itself (its first second or so, importing): its command line
# is the interpreter's, with Ray's flags (`--raylet-name=...`), so it must not match "raylet".
_STARTING_WORKER = "default_worker.py"
# (what the command line holds, the group it counts under), first match wins. Ray's own
# daemons are matched on their program, not their flags (see `_process_group`).
_GROUPS = (
    (":ingress", "serve ingress"),
    ("-mbs1", "model replica (idle, mbs1)"),
    ("ServeReplica", "model replica"),
    ("ProxyActor", "serve proxy"),
    ("ServeController", "serve controller"),
    ("bench.loadgen", "load generator"),
    ("bench.flask_server", "flask (idle)"),
    ("(ModelStage)", "job model actor"),
    ("(PreprocessStage)", "job preprocess actor"),
    ("reference_server", "reference server"),
    # Ray Data's own actors beside a job's pools (its scheduler's helpers).
    ("_AutoscalingCoordinatorActor", "ray data helpers"),
    ("_StatsActor", "ray data helpers"),
    ("ActorLocationTracker", "ray data helpers"),
    ("dashboard", "ray dashboard"),
    ("ray", "other ray processes"),
)
_DAEMONS = {"gcs_server": "ray gcs", "raylet": "ray raylet"}
# Groups a process is in until it shows a more specific one (Ray renames its workers).
_PROVISIONAL = ("ray worker (starting)", "other ray processes", "other")
# Processes of this run that are not the model's replica: what serving costs on top of it.
SERVE_OVERHEAD_GROUPS = ("serve ingress", "serve proxy", "serve controller", "ray gcs",
                         "ray raylet", "ray dashboard", "ray data helpers",
                         "ray worker (starting)", "other ray processes")


def _process_group(command: str, me: int, pid: int) -> str:
    if pid == me:
        return "bench driver"
    program = command.split(" ", 1)[0].rsplit("/", 1)[-1]
    if program in _DAEMONS:
        return _DAEMONS[program]
    if _STARTING_WORKER in command:
        return "ray worker (starting)"
    return next((group for needle, group in _GROUPS if needle in command), "other")


def _descendants(parents: dict[int, int], root: int) -> set[int]:
    """`root` and every process below it (the Ray it started, the servers it spawned)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def process_groups() -> dict[int, str]:
    """pid -> process group (as the split names them) of every process of this run now."""
    me = os.getpid()
    return {pid: _process_group(command, me, pid) for pid, (command, _) in _cpu_seconds().items()}


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user+system CPU seconds) of every process of this run: this
    process and those below it (on a shared machine other users' Ray processes look alike,
    so they are left out; "all processes" is this run's)."""
    everything = _all_cpu_seconds()
    mine = _descendants({pid: parent for pid, (_, _, parent) in everything.items()},
                        os.getpid())
    return {pid: (command, seconds) for pid, (command, seconds, _) in everything.items()
            if pid in mine}


def _all_cpu_seconds() -> dict[int, tuple[str, float, int]]:
    """pid -> (command line, user+system CPU seconds, parent pid) of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (command, (int(fields[11]) + int(fields[12])) / ticks,
                                  int(fields[1]))
    return found


def _remember(seen: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]],
              me: int) -> None:
    """Fold one look at /proc into `seen` (pid -> group, CPU seconds). A process keeps the
    first specific group it was seen in: Ray renames a worker whose actor has ended, and a
    worker seen while it was starting takes the name it shows next."""
    for pid, (command, seconds) in now.items():
        group = _process_group(command, me, pid)
        earlier = seen.get(pid)
        if earlier is not None and group in _PROVISIONAL and earlier[0] not in _PROVISIONAL:
            group = earlier[0]
        seen[pid] = (group, seconds)


def cpu_split(load: Callable[[], object], scenario: str = CPU, sample_s: float = 1.0,
              **extra) -> tuple[list[dict], object]:
    """Run `load()` and return rows of the cores each process group used meanwhile (rows of
    `scenario`, with `extra` keys), and what `load()` returned. /proc is read every
    `sample_s` as well, so a process that ends before `load()` returns still counts up to
    its last look. No rows without /proc."""
    if not Path("/proc/self/stat").exists():
        return [], load()
    me = os.getpid()
    before, began = _cpu_seconds(), time.perf_counter()
    seen: dict[int, tuple[str, float]] = {}
    _remember(seen, before, me)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_s):
            _remember(seen, _cpu_seconds(), me)

    sampler = threading.Thread(target=sample, name="bench-cpu-split", daemon=True)
    sampler.start()
    try:
        result = load()
    finally:
        stop.set()
        sampler.join()
    _remember(seen, _cpu_seconds(), me)
    wall = time.perf_counter() - began
    cores: dict[str, float] = defaultdict(float)
    for pid, (group, seconds) in seen.items():
        used = seconds - before.get(pid, ("", 0.0))[1]
        if used > 0:
            cores[group] += used / wall
    rows = [row(scenario, group, "cores", round(value, 3), **extra)
            for group, value in sorted(cores.items(), key=lambda item: -item[1])]
    rows.append(row(scenario, "all processes", "cores", round(sum(cores.values()), 3),
                    machine_cores=os.cpu_count(), **extra))
    return rows, result
