"""The demo's Ray-free parts: which output folders it may use, how it finds the processes it
started, and how it scores answers against the drawing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from raysight.cli.demo.offline import DrawnSet, score
from raysight.cli.demo.processes import descendants, wait_until_gone
from raysight.cli.demo.runner import MARKER, prepare_output
from raysight.errors import ConfigError


def test_output_folder_is_new_empty_or_an_earlier_demos(tmp_path):
    prepare_output(tmp_path / "new")
    assert (tmp_path / "new" / MARKER).is_file()
    prepare_output(tmp_path / "new")  # a re-run reuses its own folder
    (tmp_path / "empty").mkdir()
    prepare_output(tmp_path / "empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not made by `raysight demo`"):
        prepare_output(tmp_path / "mine")
    assert not (tmp_path / "mine" / MARKER).exists()


def test_children_and_grandchildren_are_found_and_waited_for():
    # A child that starts a grandchild, as the driver starts the raylet and it the workers.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
           "'import time; time.sleep(1.5)']); time.sleep(1.5)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        found: set[int] = set()
        deadline = time.monotonic() + 10
        while len(found) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the grandchild appears once the child's interpreter is up
            found = {child.pid} & descendants() | descendants(child.pid)
        assert child.pid in found and len(found) == 2
        assert wait_until_gone(found, timeout_s=0.1) == found  # both still running
        child.wait()
        assert wait_until_gone(found, timeout_s=10) == set()  # the orphaned grandchild too
    finally:
        child.kill()


def test_score_counts_only_drawn_images_and_keeps_a_few_wrong_answers(tmp_path):
    drawn = DrawnSet(tmp_path, {"a.png": "a red circle", "b.png": "a blue square",
                                "c.png": "a red square", "broken.png": ""})
    rows = [{"path": "a.png", "text": "a red circle"}, {"path": "b.png", "text": "a blue circle"},
            {"path": "c.png", "text": "a red triangle"}, {"path": "broken.png", "text": None}]
    scored = score(rows, drawn, "text", examples=1)
    assert (scored.right, scored.total) == (1, 3)
    assert scored.accuracy == pytest.approx(1 / 3)
    assert scored.wrong == [("b.png", "a blue square", "a blue circle")]
    assert drawn.images == ["a.png", "b.png", "c.png"] and drawn.broken == ["broken.png"]
