"""`raysight demo` end to end, small: its own private Ray in a subprocess, its printed report
checked against the files it wrote, and no process of its session left behind."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 200

if not (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file():
    pytest.skip("the built-in models are not built", allow_module_level=True)


def session_processes(session: int) -> list[str]:
    """Command lines of the running processes in session `session` (Ray starts none outside
    the session of the process that called ray.init)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):  # not a pid, or it exited while we looked
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry}: {command[:120]}")
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the demo once: (exit code, printed report, its output folder, its session id)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    command = [sys.executable, "-m", "raysight.cli", "demo", "--images", str(IMAGES),
               "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    # Its own session: every process the demo's Ray starts can be found by the session id.
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        report, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        pytest.fail(f"the demo ran for over 240 s:\n{process.communicate()[0][-3000:]}")
    return process.returncode, report, out, process.pid


def test_demo_exits_cleanly_and_says_every_check_passed(demo):
    code, report, _, _ = demo
    assert code == 0, report[-3000:]
    assert "Checks: all passed" in report
    assert re.search(r"the web page is at http://127\.0\.0\.1:\d+/ until", report)


def test_caption_accuracy_in_the_report_is_what_the_files_show(demo):
    _, report, out, _ = demo
    printed = float(re.search(r"Caption accuracy: (\d\.\d+) \((\d+) of (\d+)", report).group(1))
    assert printed >= 0.9
    with open(out / "images" / "labels.csv", newline="", encoding="utf-8") as handle:
        drawn = {str(out / "images" / row["path"]): row["caption"]
                 for row in csv.DictReader(handle)}
    rows = pq.read_table(out / "captions", columns=["path", "text"]).to_pylist()
    assert len(rows) == IMAGES + 3
    right = sum(row["text"] == drawn[row["path"]] for row in rows if drawn[row["path"]])
    assert printed == pytest.approx(right / IMAGES, abs=1e-3)


def test_failed_rows_are_listed_with_their_reasons(demo):
    _, report, _, _ = demo
    assert "Failed rows: 3 in each job" in report
    listed = re.findall(r"^  (corrupt_\d+\.png) +(\w+) +(.+)$", report, flags=re.M)
    assert [(name, kind) for name, kind, _ in listed] == [
        ("corrupt_00000.png", "CorruptImage"),
        ("corrupt_00001.png", "NotAnImage"),
        ("corrupt_00002.png", "EmptyImage"),
    ]
    reasons = [reason for _, _, reason in listed]
    assert "truncated" in reasons[0] and "not an image" in reasons[1] and "empty" in reasons[2]


def test_online_answers_and_search_top_five_are_right(demo):
    _, report, _, _ = demo
    for route in ("/v1/chat/completions", "/predict", "/classify"):
        assert re.search(rf"POST {route} .*\n +-> \"[a-z ]+\" \(right, ", report), route
    hits = re.findall(r"^    \d\. (img_\d+\.png) +score [\d.]+ +drawn: (.+)$", report, flags=re.M)
    assert len(hits) == 5 and {drawn for _, drawn in hits} == {"a red circle"}
    assert "search top-5: 5 of 5 are red circles" in report
    for job in ("caption", "embed", "classify"):
        speed = re.search(rf"^  {job} +{IMAGES + 3} +3 +[\d.]+ +([\d.]+)", report, flags=re.M)
        assert speed and float(speed.group(1)) > 0, job


def test_no_process_of_the_demo_is_left(demo):
    code, report, _, session = demo
    assert "no Ray processes left" in report
    deadline = time.monotonic() + 10
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.5)  # an exiting process is gone a moment later; nothing to wait on
    assert left == [], left
