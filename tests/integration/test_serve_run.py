"""`serve run serve_app/config.yaml` serves the built-in models (its own private Ray, in a
subprocess; only the port is changed, to a free one)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.api_server import free_port
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_app" / "config.yaml"
START_DEADLINE_S = 180
# Runs the command after it with Ctrl-C (SIGINT) at its default, as in a terminal. A suite
# started in the background (`make test &`) ignores SIGINT, its children inherit that, and
# Python keeps an inherited SIG_IGN: `serve run` would sit out the Ctrl-C below until the
# 60 s kill.
AS_AT_A_TERMINAL = [sys.executable, "-c", "import os, signal, sys; "
                    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "os.execv(sys.argv[1], sys.argv[1:])"]


def wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    import requests

    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/readyz", timeout=10).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still deploying
            pass
        time.sleep(0.5)  # nothing to wait on but the port: poll it
    pytest.fail(f"serve run was not ready after {START_DEADLINE_S}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> bool:
    """Ctrl-C, as a user would; then the whole process group if it does not exit. Whether
    it exited on the Ctrl-C (or before)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return False
    return True


@pytest.mark.timeout(300)
def test_serve_run_with_the_example_config(tmp_path):
    import requests

    from raysight.shapes import make_shapes

    if not (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file():
        pytest.skip("the built-in models are not built")
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    serve = Path(sys.executable).with_name("serve")
    env = dict(os.environ)
    with open(log, "wb") as output:
        # --address local: a private Ray, never a cluster another process started here.
        process = subprocess.Popen(
            [*AS_AT_A_TERMINAL, str(serve), "run", "--address", "local", str(config_file)],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log)
        image, label = make_shapes(1, seed=9)[0]
        answer = requests.post(url + "/predict", timeout=60, json={
            "prompt": "What color is the shape?",
            "image": base64.b64encode(png_bytes(image)).decode(),
        })
        assert answer.status_code == 200 and answer.json() == {"output": label.color}
        models = requests.get(url + "/v1/models", timeout=30).json()
        assert [model["id"] for model in models["data"]] == ["shapes-vlm", "shapes-clip"]
    finally:
        stopped = stop(process)
    assert stopped, f"serve run did not exit within 60 s of Ctrl-C:\n{log.read_text()[-3000:]}"
