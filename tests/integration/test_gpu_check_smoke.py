"""`python -m bench.gpu_check --device cpu --tiny` runs the GPU check's every step end to end
on tiny models on the CPU (it starts a Ray of its own for `raysight serve` and the offline
job), so the one-command GPU check cannot rot between the sessions that are lent a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(500)
def test_gpu_check_tiny_on_cpu_passes_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    print(f"gpu_check --device cpu --tiny took {time.perf_counter() - began:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    payload = json.loads(out.read_text())
    assert payload["passed"] is True and payload["device"] == "cpu" and payload["tiny"] is True
    checks = {check["name"]: check for check in payload["checks"]}
    expected = {f"batched_equals_single/{arch}/{dtype}" for arch in ("clip", "qwen2-vl", "llava")
                for dtype in ("bfloat16", "float16")}
    expected |= {"vision_cache/qwen2-vl/bfloat16", "vision_cache/llava/bfloat16",
                 "served/embeddings", "served/generation", "offline_embed"}
    assert set(checks) == expected
    assert all(check["passed"] for check in checks.values())
    assert checks["batched_equals_single/clip/float16"]["min_cosine"] >= 0.999
    qwen = checks["batched_equals_single/qwen2-vl/bfloat16"]
    assert qwen["rows"] == qwen["equal_rows"] + qwen["near_tie_rows"] == 4
    cache = checks["vision_cache/qwen2-vl/bfloat16"]
    assert cache["hits_second_pass"] >= cache["images"] > 0 and cache["feature_devices"] == ["cpu"]

    assert set(payload["steps"]) == {"build_models", "batched_equals_single", "vision_cache",
                                     "throughput_embeddings", "throughput_generation",
                                     "offline_embed"}
    assert {m["size"] for m in payload["models"].values()} == {"tiny"}
    figures = payload["figures"]
    for kind in ("embeddings", "generation"):
        points = {(row["variant"], row["clients"]) for row in figures[kind]}
        assert points == {(v, c) for v in ("ceiling", "served") for c in (1, 8)}
        for row in figures[kind]:
            assert row["requests_per_s"] > 0 and "gpu_busy_pct" in row
            assert row["gpu_busy_pct"] is None  # no GPU: no figure rather than a made-up one
    assert all(row["tokens_per_s"] > 0 for row in figures["generation"])
    offline = figures["offline_embed"]
    assert offline["images"] == 64 and offline["job_images_per_s"] > 0
    assert offline["loop_images_per_s"] > 0 and offline["ratio_to_loop"] > 0
    assert "PASSED" in done.stdout and "served" in done.stdout
