"""Cold start: ``raysight serve --model ...`` as a fresh process, until its first answer.

The clock starts when the process is spawned and stops at the first 200 from
``/v1/embeddings``: Ray's local start, Serve's start, the model load and the first forward.
The server runs in a session of its own, and each repeat ends by killing that session:
every process it started (its private Ray, Serve's actors) goes at once, where a graceful
shutdown would take ~7 s a repeat that no figure uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.report import median_row
from bench.servers import child_env, free_port
from bench.settings import BenchSettings

SCENARIO = "cold_start"


def _raysight_command() -> list[str]:
    script = Path(sys.executable).with_name("raysight")
    if script.exists():
        return [str(script)]
    found = shutil.which("raysight")
    return [found] if found else [sys.executable, "-m", "raysight.cli"]


def time_to_first_answer(folder: str, timeout_s: float) -> float:
    import httpx

    from bench.payloads import embedding_body, jpeg_images

    port = free_port()
    body = embedding_body("model", jpeg_images(1)[0])
    body["model"] = Path(folder).name  # the served name defaults to the folder's name
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    log = tempfile.TemporaryFile()  # a pipe nobody reads would stall a chatty server
    started = time.perf_counter()
    process = subprocess.Popen(
        _raysight_command() + ["serve", "--model", folder, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log, env=child_env(), start_new_session=True,
    )
    try:
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"raysight serve exited with {process.returncode}: "
                                   f"{log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.post(url, json=body, timeout=30).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"raysight serve gave no answer within {timeout_s:.0f} s")
    finally:
        kill_session(process.pid)
        process.wait()
        log.close()


def kill_session(session: int, timeout_s: float = 30.0) -> None:
    """SIGKILL every process of `session` (a leader's pid) until none is left: Ray's
    workers sit in process groups of their own inside it, so one killpg is not enough."""
    deadline = time.monotonic() + timeout_s
    while members := _session_members(session):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(members)} of session {session} outlived "
                               f"SIGKILL for {timeout_s:.0f} s")
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _session_members(session: int) -> list[int]:
    """Live (not zombie) processes whose session id is `session`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def cold_start(folder: str, settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    seconds = []
    for _ in range(settings.cold_start_repeats):
        seconds.append(time_to_first_answer(folder, settings.cold_start_timeout_s))
        log(f"  cold start: {seconds[-1]:.1f} s")
    return [median_row(SCENARIO, "raysight_serve", "seconds", seconds, unit="s")]
