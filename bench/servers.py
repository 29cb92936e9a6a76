"""The servers under test, each a context manager yielding its base URL: raysight on Ray
Serve (an app per model: the configured max_batch_size, and the same model at 1), and in
processes of their own the Flask baseline and the single-process batching reference."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from serve_app.direct_ingress import free_port  # noqa: F401 - the scenarios import it here

REPO_ROOT = Path(__file__).resolve().parent.parent
MBS1_PREFIX = "/mbs1"  # where raysight_server serves the max_batch_size=1 app


def child_env() -> dict[str, str]:
    """This process's environment, with the repo on PYTHONPATH so `-m bench.*` imports
    from wherever the run was started."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def wait_until_up(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f} s")


@contextmanager
def raysight_server(folder: str, name: str, max_batch_size: int, max_clients: int,
                    batch_wait_s: float | None = None, with_mbs1: bool = True,
                    num_gpus: float = 0.0, direct: bool = False,
                    **spec_options) -> Iterator[str]:
    """raysight on the Ray this process runs: model `name` at `max_batch_size` (and
    `batch_wait_s`, default the ModelSpec's) and, `with_mbs1`, `name`-mbs1 at max_batch_size
    1 under the URL's MBS1_PREFIX, each an app of one model (as `raysight serve --model`
    deploys one), both with the default deployment options but `num_gpus` per replica (0.5: the two
    share one GPU) and other ModelSpec fields in `spec_options`. `direct`: the model's replica
    answers HTTP itself behind raysight's relay (`--direct-ingress`; the Ray must have been
    started for it, serve_app/direct_ingress.py)."""
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import ServeConfig, ServedModel
    from serve_app.launch import start_serving, stop_relay

    # Room for every client: the 503s of a full queue would be measured as errors. And a
    # replica that may hold every client, as the README advises for a known concurrency:
    # past max_ongoing_requests Serve's router holds requests back with a backoff.
    deployment = {"max_queued_requests": 4 * max_clients, "max_ongoing_requests": max_clients,
                  "num_gpus": num_gpus}
    wait = {} if batch_wait_s is None else {"batch_wait_timeout_s": batch_wait_s}
    if direct and with_mbs1:
        raise ValueError("direct ingress serves one app per Ray: pass with_mbs1=False")
    port = free_port()
    configs = [ServeConfig(
        models=[ServedModel(spec=ModelSpec(model=folder, name=name, max_batch_size=max_batch_size,
                                           **wait, **spec_options), deployment=deployment)],
        port=port, app_name=f"bench-{name}", ingress={"direct": direct})]
    if with_mbs1:  # an app of its own, as `raysight serve` of one model deploys it
        configs.append(ServeConfig(
            models=[ServedModel(spec=ModelSpec(model=folder, name=f"{name}-mbs1",
                                               max_batch_size=1, **spec_options),
                                deployment=deployment)],
            port=port, app_name=f"bench-{name}-mbs1", route_prefix=MBS1_PREFIX))
    try:
        url = [start_serving(config) for config in configs][0]
        yield url
    finally:
        for config in configs:
            serve.delete(config.app_name)
            stop_relay(config.app_name)


@dataclass
class StartingServer:
    """A server process loading its model; `ready()` waits until it answers."""

    url: str
    process: subprocess.Popen

    def ready(self, timeout_s: float = 120) -> str:
        wait_until_up(self.url + "/healthz", timeout_s, self.process)
        return self.url


@contextmanager
def flask_server(folder: str, task: str) -> Iterator[StartingServer]:
    """The hand-written baseline (bench/flask_server.py) in its own process. It loads its
    model while the caller goes on (e.g. starts raysight); `ready()` gives its URL."""
    with _server_process(["bench.flask_server", "--model", folder, "--task", task]) as server:
        yield server


@contextmanager
def reference_server(folder: str, max_batch_size: int) -> Iterator[StartingServer]:
    """The single-process batching reference (bench/reference_server.py), embeddings only;
    like flask_server, `ready()` waits for it."""
    with _server_process(["bench.reference_server", "--model", folder,
                          "--max-batch-size", str(max_batch_size)]) as server:
        yield server


@contextmanager
def _server_process(module_and_args: list[str]) -> Iterator[StartingServer]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *module_and_args, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )
    try:
        yield StartingServer(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
