"""Cold start: ``raysight serve --model ...`` as a fresh process, until its first answer.

The clock starts when the process is spawned and stops at the first 200 from
``/v1/embeddings``: Ray's local start, Serve's start, the model load and the first forward.
"""

from __future__ import annotations

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
        stdout=subprocess.DEVNULL, stderr=log, env=child_env(),
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
        process.send_signal(signal.SIGINT)  # serve shuts Serve and its private Ray down
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def cold_start(folder: str, settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    seconds = []
    for _ in range(settings.cold_start_repeats):
        seconds.append(time_to_first_answer(folder, settings.cold_start_timeout_s))
        log(f"  cold start: {seconds[-1]:.1f} s")
    return [median_row(SCENARIO, "raysight_serve", "seconds", seconds, unit="s")]
