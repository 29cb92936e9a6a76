"""The README's examples, run: its offline Python example (as a user runs a script: its own
Ray, in the README's working folder), then its `raysight serve` command's app on the
session's Ray, and every curl and OpenAI-client example against it. The only change is a
free port for localhost:8000."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.api_server import free_port
from tests.unit.test_readme import SERVER, code_blocks, section

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

if not (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file():
    pytest.skip("the built-in models are not built", allow_module_level=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The README's working folder after its drawing snippet and its offline Python example."""
    folder = tmp_path_factory.mktemp("readme")
    online, offline = section("Online"), section("Offline")
    [draw] = [block for block in code_blocks("python", online) if "image.save(" in block]
    [jobs] = [block for block in code_blocks("python", offline) if "run_caption" in block]
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "RAY_ADDRESS": "local"}  # a private Ray, never one another process started
    for name, block in (("drawing", draw), ("offline", jobs)):
        done = subprocess.run([sys.executable, "-c", block], cwd=folder, env=env, text=True,
                              capture_output=True, timeout=300, start_new_session=True)
        assert done.returncode == 0, f"README {name} example:\n{done.stderr[-3000:]}"
    (folder / "offline.out").write_text(done.stdout)
    return folder


def test_the_offline_example_wrote_every_output(workdir):
    import pyarrow.parquet as pq

    printed = (workdir / "offline.out").read_text()
    assert "caption: 103 rows" in printed and "3 failed" in printed
    assert "index: 100 vectors" in printed
    colors = pq.read_table(workdir / "colors", columns=["text", "error"]).to_pylist()
    assert len(colors) == 103 and {row["text"] for row in colors if row["error"] is None} <= {
        "red", "green", "blue", "yellow"}
    assert len(pq.read_table(workdir / "classes", columns=["label"])) == 103
    assert (workdir / "shapes-index" / "index.faiss").is_file()


@pytest.fixture(scope="module")
def server(ray_session, workdir):
    """The app of the README's `raysight serve` command; yields its port."""
    from ray import serve

    from serve_app.config import ServeConfig
    from serve_app.launch import build_parser, config_from_arguments, start_serving

    [command] = [line for block in code_blocks("bash", section("Online"))
                 for line in block.splitlines() if line.startswith("raysight serve")]
    with contextlib.chdir(workdir):  # typed where the README's examples run
        config = config_from_arguments(build_parser().parse_args(shlex.split(command)[2:]))
    config = ServeConfig.model_validate({**config.model_dump(), "port": free_port()})
    start_serving(config)
    yield config.port
    serve.delete(config.app_name)
    serve.shutdown()


def test_every_curl_example_answers_200_with_the_right_answer(server, workdir):
    blocks = [block for block in code_blocks("bash", section("Online")) if SERVER in block]
    script = "\n".join(blocks).replace(SERVER, f"localhost:{server}")
    # --fail-with-body: an HTTP error fails the script, and its body is still shown.
    prelude = "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; echo; }\n"
    done = subprocess.run(["bash", "-c", prelude + script], cwd=workdir, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    printed = done.stdout
    for answer in ('"content":"red"', "data: [DONE]", '"object":"embedding"',
                   '"id":"shapes-vlm"', '{"output":"circle"}', '"label":"a red circle"',
                   '"index":"shapes-index"', '{"status":"ok"}', '"status":"ready"'):
        assert answer in printed, answer
    assert len(blocks) >= 8


def test_every_openai_client_example_runs(server, workdir, monkeypatch):
    blocks = [block for block in code_blocks("python", section("Online"))
              if "image.save" not in block]
    assert len(blocks) == 3
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    printed = io.StringIO()
    with redirect_stdout(printed):
        for number, block in enumerate(blocks):
            code = block.replace(SERVER, f"localhost:{server}")
            exec(compile(code, f"README.md, online python block {number}", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "red"  # the colour question
    assert lines[1] == "a red circle"  # the streamed caption
    red, blue = namespace["similarity"]
    assert red > blue
    assert lines[-1] == "['shapes-vlm', 'shapes-clip']"
