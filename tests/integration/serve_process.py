"""Helpers for tests that run `raysight serve` as a process of its own, and for the
embeddings requests they send."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from pathlib import Path

from tests.conftest import png_bytes


def wait_for_banner(server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Return once `raysight serve` has printed that it serves; fail with its log's tail if it
    exits or does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not re.search(r"^raysight: serving", log.read_text(errors="replace"), re.M):
        assert server.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "raysight serve did not come up"
        time.sleep(0.5)  # the banner is the only sign it is up: poll the log


def image_body(seed: int) -> dict:
    """A /v1/embeddings body of one drawn shape (distinct per seed) for builtin shapes-clip."""
    from raysight.shapes import make_shapes

    [(image, _)] = make_shapes(1, seed=seed)
    url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    return {"model": "shapes-clip", "input": [url], "modality": "image"}
