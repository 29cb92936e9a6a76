"""`python -m bench --quick` runs the benchmark scenarios end to end on tiny models and
writes the JSON and the plots the README shows. To stay within ~2 min it runs the sweep, the
online embeddings (through Serve's proxy, and with direct ingress) and the offline job; online
generation goes through the same code as the embeddings, and the cold start and the caching
benchmark each start a Ray of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.settings import QUICK

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("batch_sweep", "online_embeddings", "offline_embed", "online_embeddings_direct")


# ~130 s on this machine when it is quiet, 179 s in a CI run on a slow morning.
@pytest.mark.timeout(330)
def test_quick_bench_writes_json_and_plots(tmp_path):
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)]
    for scenario in SCENARIOS:
        command += ["--only", scenario]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=320)
    assert done.returncode == 0, done.stderr[-3000:]

    payload = json.loads((tmp_path / "latest.json").read_text())
    assert payload["quick"] is True
    # The online embeddings and the offline job also record where the cores went
    # (bench/bounds.py).
    assert {row["scenario"] for row in payload["rows"]} == set(SCENARIOS) | {
        "embeddings_cpu_split", "offline_cpu_split"}
    for split, busiest in (("embeddings_cpu_split", "model replica"),
                           ("offline_cpu_split", "job model actor")):
        cores = {r["variant"]: r["value"] for r in payload["rows"] if r["scenario"] == split}
        assert cores[busiest] > 0.1 and cores["all processes"] >= cores[busiest], cores
    for row in payload["rows"]:
        assert {"scenario", "variant", "metric", "value"} <= set(row)
    online = {(r["variant"], r["metric"]) for r in payload["rows"]
              if r["scenario"] == "online_embeddings"}
    for variant in ("raysight", "ceiling", "reference", "flask", "raysight_mbs1"):
        assert (variant, "throughput") in online and (variant, "p99_ms") in online
    # What each request cost outside the model's replica, and the 1-client latency over
    # the in-process request's.
    # (in steady state, over the windows' throughput, and over the whole measurement).
    extra = {r["metric"]: r for r in payload["rows"] if r["scenario"] == "online_embeddings"
             and r["metric"] in ("cpu_ms_outside_replica", "cpu_ms_outside_replica_whole_run",
                                 "p50_over_ceiling_ms")}
    # (A quick run's windows last about a second: the steady figure may round to 0 there.)
    steady = extra["cpu_ms_outside_replica"]
    assert steady["requests_per_s"] > 0 and steady["seconds"] > 0 and steady["cores"] >= 0
    assert steady["value"] == pytest.approx(1000 * steady["cores"] / steady["requests_per_s"],
                                            rel=0.02, abs=0.05)
    whole = extra["cpu_ms_outside_replica_whole_run"]
    assert whole["value"] > 0 and whole["requests"] > 0
    # The same server with direct ingress (its own Ray), against the same ceiling and reference.
    direct = {(r["variant"], r["metric"]): r for r in payload["rows"]
              if r["scenario"] == "online_embeddings_direct"}
    for variant in ("raysight_direct", "ceiling", "reference"):
        assert direct[(variant, "throughput")]["value"] > 0
    assert direct[("raysight_direct", "cpu_ms_outside_replica")]["requests_per_s"] > 0
    assert ("raysight_direct", "p50_over_ceiling_ms") in direct
    # Where a cycle goes: the replica's Server-Timing beside the forward alone in-process.
    replica_ms = direct[("raysight_direct", "replica_batch_ms")]
    alone = direct[("ceiling", "forward_only_ms")]
    assert replica_ms["value"] > 0 and alone["value"] > 0
    assert replica_ms["clients"] == alone["clients"]
    assert direct[("raysight_direct", "replica_queue_ms")]["value"] >= 0
    assert extra["p50_over_ceiling_ms"]["clients"] == 1
    # The 1-client figure comes from requests side by side with the in-process ones
    # (bench/paired_latency.py): both p50s are kept, and the figure is their difference.
    for scenario, variant in (("online_embeddings", "raysight"),
                              ("online_embeddings_direct", "raysight_direct")):
        paired = {(r["variant"], r["metric"]): r for r in payload["rows"]
                  if r["scenario"] == scenario and r.get("pairs")}
        served = paired[(variant, "paired_p50_ms")]["value"]
        alone = paired[("ceiling", "paired_p50_ms")]["value"]
        assert served > 0 and alone > 0
        assert paired[(variant, "p50_over_ceiling_ms")]["value"] == pytest.approx(
            served - alone, abs=0.15)
        assert paired[(variant, "p50_over_ceiling_ms")]["pairs"] == QUICK.latency_pairs
    served = [r["value"] for r in payload["rows"] if r["scenario"] == "online_embeddings"
              and r["metric"] == "throughput" and r["variant"] == "raysight"]
    assert served and all(value > 0 for value in served)
    assert [t["status"] for t in payload["targets"]
            if t["target"].startswith("offline")] in (["PASS"], ["MISS"])
    for scenario in SCENARIOS + ("targets",):
        assert (tmp_path / f"{scenario}.png").stat().st_size > 10_000
    assert "targets:" in done.stdout


@pytest.mark.timeout(240)
def test_quick_serve_batch_compares_the_three_batchers(tmp_path):
    """bench/serve_batch.py: the DrainBatcher, @serve.batch and max_batch_size=1 side by side
    behind raysight's ingress, each answering every request and reporting its batches."""
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path),
               "--only", "serve_batch"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=230)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "latest.json").read_text())["rows"]
    figures = {(r["variant"], r["metric"]): r["value"] for r in rows
               if r["scenario"] == "serve_batch"}
    for variant in ("drain", "serve.batch", "drain_mbs1"):
        assert figures[(variant, "throughput")] > 0 and figures[(variant, "p99_ms")] > 0
        assert 1 <= figures[(variant, "mean_batch")] <= 16
    assert figures[("drain_mbs1", "mean_batch")] == 1


def test_readme_benchmarks_section_shows_committed_results():
    """The README's Benchmarks section (excluded from the README command checks) shows
    plots that exist and names only scenarios `python -m bench --only` accepts."""
    import re

    from bench.runner import DEFAULT_SCENARIOS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Benchmarks\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "the README has no Benchmarks section"
    section = match.group(1)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
    for image in images:
        assert (ROOT / image).is_file(), image
    named = re.findall(r"`(\w+)`", section)
    assert {"online_embeddings", "offline_embed"} <= set(named)
    results = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    assert results["quick"] is False
    # `make bench` records the default scenarios; caching and serve_batch run on their own.
    assert {r["scenario"] for r in results["rows"]} >= set(DEFAULT_SCENARIOS)
