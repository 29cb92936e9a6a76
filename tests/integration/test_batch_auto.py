"""An embed job through Ray Data with `max_batch_size: auto` and `batch_size: auto`: the pick
in its summary, the cache on the second run, and vectors equal to the online engine's (the
model stage normalises the uint8 pixels the CPU stage sent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysight.builtin import BUILTIN_MODELS
from raysight.shapes import write_shapes_folder

pytestmark = pytest.mark.integration

CLIP = "builtin:shapes-clip"
IMAGES = 24


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """Two runs of the same job (the second starts over, preparing its images in the model
    actors, no CPU stage): their summaries and the second's output."""
    from batch_jobs import run_embed
    from raysight.spec import ModelSpec

    if not (BUILTIN_MODELS["shapes-clip"] / "model.safetensors").is_file():
        pytest.skip("built-in model shapes-clip is not trained yet")
    root = tmp_path_factory.mktemp("auto")
    images = write_shapes_folder(root / "images", IMAGES, seed=5)
    spec = ModelSpec(model=CLIP, max_batch_size="auto",
                     auto_batch={"max_size": 8, "budget_s": 2.0,
                                 "cache_file": str(root / "sizes.json")})
    output = root / "out"
    first = run_embed(spec, str(images), str(output), batch_size="auto", progress=False)
    second = run_embed(spec, str(images), str(output), batch_size="auto", progress=False,
                       overwrite=True, preprocess_in="model")
    return first, second, output, images


def test_the_pick_is_in_the_summary_and_the_second_run_reads_the_cache(runs):
    first, second, output, _ = runs
    assert first.rows == IMAGES and first.failures == 0
    assert first.auto_batch is not None and not first.auto_batch["from_cache"]
    swept = {int(size) for size in first.auto_batch["throughput"]}
    assert first.max_batch_size == first.auto_batch["size"] and first.max_batch_size in swept
    assert swept <= {1, 2, 4, 8}
    assert f"max_batch_size auto -> {first.max_batch_size}" in first.format()
    assert second.auto_batch["from_cache"] and second.auto_batch["throughput"] == {}
    assert second.max_batch_size == first.max_batch_size and second.rows == IMAGES
    assert "preprocess: 1-" in first.plan and second.plan.endswith("preprocess: in the model actors")
    written = json.loads((output / "_raysight_summary.json").read_text())
    assert written["max_batch_size"] == first.max_batch_size
    assert written["auto_batch"]["from_cache"] is True


def test_offline_vectors_equal_the_online_engine(runs):
    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.spec import ModelSpec

    first, _, output, images = runs
    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    paths = sorted(rows)
    engine = build_engine(ModelSpec(model=CLIP, max_batch_size=first.max_batch_size))
    online = engine.run([EmbedRequest(image=Path(path).read_bytes()) for path in paths])
    for path, answer in zip(paths, online):
        np.testing.assert_allclose(np.asarray(rows[path]["embedding"]), answer.vector,
                                   rtol=0, atol=1e-6)
