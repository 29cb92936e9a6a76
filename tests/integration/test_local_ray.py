"""raysight's private local Ray (raysight/local_ray.py): loopback only, token auth, workers at
the driver's priority; nothing of it is left after a killed job driver or a SIGTERMed
`raysight serve`, which first finishes the requests in flight."""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from raysight.shapes import write_shapes_folder
from tests.integration.serve_process import wait_for_banner

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 240


def listening(processes) -> list[tuple[int, str, str, int]]:
    """(pid, name, address, port) of every TCP/UDP socket these processes listen on."""
    found = []
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):
                    found.append((process.pid, process.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def still_running(pids) -> list[str]:
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def wait_until_gone(pids, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (alive := still_running(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)  # exits come with no event to wait on here
    return alive


def test_the_session_ray_listens_on_loopback_only_with_auth_and_workers_at_our_priority(
        ray_session):
    import ray

    @ray.remote
    def worker_niceness() -> int:
        return os.nice(0)

    # The session's Ray was started by raysight.local_ray in this process: its tree is ours.
    assert ray.get(worker_niceness.remote()) == os.nice(0)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    processes = psutil.Process().children(recursive=True)
    names = {process.name() for process in processes}
    assert {"gcs_server", "raylet"} <= names
    sockets = listening(processes)
    assert any(name == "raylet" for _, name, _, _ in sockets)
    exposed = [s for s in sockets if not is_loopback(s[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert os.environ.get("RAY_AUTH_MODE") == "token" and os.environ.get("RAY_AUTH_TOKEN")


def test_the_private_rays_processes_get_its_quieter_idle_settings(ray_session):
    """Ray's and Serve's processes inherit the quieter idle settings (raysight/local_ray.py),
    each unless the user's environment chose it."""
    import ray

    from raysight.local_ray import QUIET_ENV

    @ray.remote
    def worker_env() -> dict:
        return {name: os.environ.get(name) for name in QUIET_ENV}

    expected = {name: os.environ.get(name, value) for name, value in QUIET_ENV.items()}
    assert ray.get(worker_env.remote()) == expected


def test_a_killed_job_driver_takes_its_private_ray_with_it(ray_session, tiny_models, tmp_path):
    from batch_jobs import run_caption

    images = write_shapes_folder(tmp_path / "images", 160, seed=3)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "batch_jobs.caption", "--model", tiny_models["blip"],
               "--input", str(images), "--output", str(output), "--max-new-tokens", "24",
               "--rows-per-file", "16", "--batch-size", "8", "--preprocess-batch-size", "8",
               "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # its own private Ray, started by raysight.local_ray
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    ray_pids: set[int] = set()
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not list(output.glob("part-*.parquet")):
            assert driver.poll() is None, "the driver ended before writing a part file"
            assert time.monotonic() < deadline, f"no part file within {START_DEADLINE_S} s"
            ray_pids |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
            time.sleep(0.1)
        ray_pids |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
    finally:
        driver.send_signal(signal.SIGKILL)  # the driver alone, as the OOM killer would
        driver.wait()
    assert len(ray_pids) >= 4, "the job did not start a Ray of its own"
    # The watchdog's sweep alone may take ~6 s (SIGTERM, up to 3 s grace, SIGKILL, up to
    # 3 s more), and its scans read every process of this shared machine: allow for a busy one.
    left = wait_until_gone(ray_pids, timeout_s=30)
    assert not left, f"still running 30 s after the driver was killed: {left}"
    # The job resumes, as ever (here on the session's Ray).
    summary = run_caption(tiny_models["blip"], str(images), str(output), max_new_tokens=24,
                          rows_per_file=64, progress=False)
    assert summary.output_rows == 160 and summary.skipped > 0


def unauthenticated_call_is_refused(port: int) -> bool:
    """Whether a gRPC call without Ray's token to 127.0.0.1:`port` is refused as such."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def _chat_body() -> dict:
    import numpy as np
    from PIL import Image

    # A large noisy JPEG: each request spends a moment decoding and preprocessing it.
    pixels = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"model": "shapes-vlm", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What color is the shape?"}]}]}


@pytest.mark.timeout(420)
def test_sigterm_finishes_requests_in_flight_then_exits_0_leaving_no_ray(tmp_path):
    import requests

    from tests.api_server import free_port

    port = free_port()
    log = tmp_path / "serve.log"
    command = [str(Path(sys.executable).with_name("raysight")), "serve", "--model",
               "builtin:shapes-vlm", "--port", str(port), "--drain-timeout", "60"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as output:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_banner(server, log, START_DEADLINE_S)
        ray_tree = psutil.Process(server.pid).children(recursive=True)
        ray_pids = {p.pid for p in ray_tree}
        # Serve's HTTP proxy included, everything of this command listens on loopback only,
        # but for what Ray 2.60 hard-codes: each Serve replica's inter-deployment gRPC server
        # binds [::]:0. That one has Ray's token check: a call without the token is refused.
        sockets = listening([psutil.Process(server.pid), *ray_tree])
        assert any(port == int(port_) for *_, port_ in sockets)
        exposed = [s for s in sockets if not is_loopback(s[2])]
        assert all(name.startswith("ray::ServeReplica") for _, name, _, _ in exposed), exposed
        for *_, exposed_port in exposed:
            assert unauthenticated_call_is_refused(exposed_port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = _chat_body()
        assert requests.post(url, json=body, timeout=120).status_code == 200  # warm
        payload = json.dumps(body).encode()
        answers: list = []
        sent = threading.Semaphore(0)

        def ask() -> None:
            # http.client, not requests: request() returns once the whole body (~6 MB) is
            # written, so the server has had the request's headers and most of its body.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            was_sent = False
            try:
                connection.request("POST", "/v1/chat/completions", payload,
                                   {"Content-Type": "application/json"})
                sent.release()
                was_sent = True
                answers.append(connection.getresponse().status)
            except (OSError, http.client.HTTPException) as exc:
                answers.append(repr(exc))
            finally:
                if not was_sent:
                    sent.release()  # a failed send: the answers below say what happened
                connection.close()

        burst = [threading.Thread(target=ask) for _ in range(6)]
        for thread in burst:
            thread.start()
        # SIGTERM once every request is in, not after a fixed pause: a busy machine sends
        # six such bodies slowly, and a request that came after SIGTERM would be refused.
        for _ in burst:
            assert sent.acquire(timeout=120), "a request was not sent within 120 s"
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        for thread in burst:
            thread.join()
        exit_code = server.wait(timeout=120)
        took = time.monotonic() - stopped
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert answers == [200] * 6, log.read_text(errors="replace")[-3000:]
    assert exit_code == 0, log.read_text(errors="replace")[-3000:]
    assert took < 90
    assert "raysight: shutting down" in log.read_text(errors="replace")
    left = wait_until_gone(ray_pids, timeout_s=5)
    assert not left, f"Ray processes left after raysight serve exited: {left}"


def _ray_daemons() -> set[int]:
    """Pids of every raylet and GCS server on the machine (the session's Ray's included)."""
    found = set()
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("raylet", "gcs_server"):
            found.add(process.pid)
    return found


@pytest.mark.timeout(180)
def test_a_config_this_machine_cannot_hold_is_refused_at_once_leaving_no_ray(tmp_path):
    """Three models of half the machine's CPUs each (one CPU each on 2 cores) on the private
    Ray: Serve would wait for the third replica for ever; raysight serve says why and exits 2,
    with no traceback."""
    # The private Ray's CPUs are the machine's: three replicas of half of them never fit.
    half = (os.cpu_count() or 1) / 2
    config = tmp_path / "three.yaml"
    config.write_text("models:\n" + "".join(
        f"  - model: builtin:shapes-clip\n    name: clip-{n}\n"
        f"    deployment: {{num_cpus: {half:g}}}\n" for n in "abc"))
    before = _ray_daemons()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [str(Path(sys.executable).with_name("raysight")), "serve", "--serve-config",
               str(config), "--port", "0"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=150)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "model 'clip-c' does not fit on raysight's private local Ray" in done.stderr, output
    assert "Lower deployment.num_cpus" in done.stderr and "Traceback" not in output, output
    left = wait_until_gone(_ray_daemons() - before, timeout_s=10)
    assert not left, f"Ray processes left after raysight serve exited: {left}"
