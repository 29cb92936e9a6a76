"""`pytest -m "not integration"` runs without Ray: every test under tests/integration carries
the integration marker (so the filter leaves none of them), and tests/conftest.py fails any
other test that starts Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_not_integration_leaves_no_integration_test():
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
               "-m", "not integration", "tests/integration"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # Exit code 5: no test selected. An unmarked module's tests would be listed (code 0).
    assert done.returncode == 5, done.stdout[-3000:] + done.stderr[-3000:]
    assert " deselected" in done.stdout and "::" not in done.stdout


def test_a_test_that_starts_ray_without_the_marker_fails(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403 - its hooks\n")
    (tmp_path / "test_starts_ray.py").write_text(
        "import ray\n\n"
        "def test_starts_ray(monkeypatch):\n"
        "    # Stands in for ray.init: what the guard sees is Ray initialised afterwards.\n"
        "    monkeypatch.setattr(ray, 'is_initialized', lambda: True)\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "started Ray but is not marked integration" in done.stdout
