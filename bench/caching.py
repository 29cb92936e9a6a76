"""What the caches save: the same engine with its caches on and off, on one model.

Scenarios (each variant runs the same requests; the variants alternate, so load from
anything else on the machine hits both alike):
- ``caching_chat_4_turns``: a 4-turn chat whose client resends the whole history, image
  included, every turn (as OpenAI-style clients do);
- ``caching_4_questions``: four one-turn questions about one image;
- ``caching_offline_50pct_duplicates``: a caption job over a dataset where every image
  appears twice: the job's two stages in this process (with their hit rates), and the real
  Ray Data job (``run_job``; its actors' hit rates are not visible from here).

Latency rows are per request: ``latency_s_repeat`` over the requests that resend an image
already seen (turns/questions 2-4), ``latency_s_all`` over all four; the ``cache/no_cache``
rows are their ratios. The model is Qwen2-VL shaped with random weights, proportioned like
Qwen2-VL-2B at a 448 px image: 1024 patches through a vision tower that is 40% of the
weights (12 layers of 320), 256 image tokens into a 6-layer 512-wide language model.

    python -m bench.caching [--quick]      # prints the rows as JSON lines

Measured (2 CPU cores, no GPU, torch 2.13, transformers 5.23; 5 sessions per variant,
12 new tokens, 448 px images; medians):

| scenario | no cache | cache | cache / no cache | vision hit rate |
| --- | --- | --- | --- | --- |
| 4-turn chat, turns 2-4 | 0.576 s | 0.222 s | 0.385 | 0.75 (3 of 4) |
| 4-turn chat, all turns | 0.571 s | 0.311 s | 0.544 | |
| 4 questions, questions 2-4 | 0.521 s | 0.203 s | 0.389 | 0.75 |
| 4 questions, all | 0.521 s | 0.285 s | 0.548 | |
| offline, 32 images twice: stages | 1.28 img/s | 2.05 img/s | x1.60 | 0.50 (preprocess 0.50) |
| offline, the same rows: Ray Data job | 1.03 img/s | 1.40 img/s | x1.36 | |

The Ray Data job's figure includes starting its actors and loading the model in them; the
stages' figure is one model actor's steady state. Only the turns that resend an image can
gain: the first request of a session encodes it either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

CACHE = "cache"
NO_CACHE = "no_cache"
RATIO = "cache/no_cache"
CACHES_OFF = {"preprocess_cache_bytes": 0, "vision_cache_bytes": 0}
QUESTIONS = ["What is in the image?", "What color is the shape?", "Describe the image.",
             "Is there anything unusual?"]
REPLIES = ["A shape.", "It is red.", "A red circle on a plain background."]


def _size(quick: bool):
    from tests.fixtures.random_models import TINY, RandomModelSize

    if quick:
        return TINY, 64, 4
    # 448 px images: 32 x 32 patches of 14 px under the processor's pixel budget.
    size = RandomModelSize(hidden=512, layers=6, heads=8, vision_hidden=320, vision_layers=12,
                           image_size=224, patch=14, vocab=8000, init_std=0.02)
    return size, 448, 12


def _model_folder(size) -> str:
    from tests.fixtures.random_models import build_random_model

    tag = hashlib.sha1(json.dumps(asdict(size), sort_keys=True).encode()).hexdigest()[:8]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    folder = Path(base) / "raysight" / "bench-models" / f"qwen2-vl-caching-{tag}"
    marker = folder / "built"
    if not marker.exists():
        build_random_model("qwen2-vl", folder, size)
        marker.write_text("ok\n")
    return str(folder)


def _images(count: int, side: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype="uint8"))
            for _ in range(count)]


def _chat_turns(image, tokens: int):
    """The four requests of one chat: each resends the history with the image."""
    from raysight.engines.generate import GenerateRequest

    history: list[dict] = []
    requests = []
    for turn, question in enumerate(QUESTIONS):
        content = [{"type": "text", "text": question}]
        if turn == 0:
            content.insert(0, {"type": "image", "image": image})
        history = history + [{"role": "user", "content": content}]
        requests.append(GenerateRequest(messages=history, max_new_tokens=tokens,
                                        min_new_tokens=tokens))
        if turn < len(REPLIES):
            history = history + [{"role": "assistant", "content": REPLIES[turn]}]
    return requests


def _questions(image, tokens: int):
    from raysight.engines.generate import GenerateRequest

    return [GenerateRequest.from_prompt(q, image, max_new_tokens=tokens, min_new_tokens=tokens)
            for q in QUESTIONS]


def _timed(engine, requests) -> list[float]:
    seconds = []
    for request in requests:
        started = time.perf_counter()
        result = engine.run([request])[0]
        seconds.append(time.perf_counter() - started)
        if not hasattr(result, "token_ids"):
            raise RuntimeError(f"the benchmark request failed: {result}")
    return seconds


def _latency_rows(scenario: str, engines: dict, make_requests, images, tokens: int) -> list[dict]:
    """Each image is one session (a chat, or four questions) per variant, variants alternating."""
    from bench.report import median_row, row

    repeat: dict[str, list[float]] = {name: [] for name in engines}
    every: dict[str, list[float]] = {name: [] for name in engines}
    before = {name: _vision_stats(engine) for name, engine in engines.items()}
    for image in images:
        for name, engine in engines.items():
            seconds = _timed(engine, make_requests(image, tokens))
            repeat[name].append(statistics.mean(seconds[1:]))
            every[name].append(statistics.mean(seconds))
    rows = []
    for name, engine in engines.items():
        hit_rate = _hit_rate(before[name], _vision_stats(engine))
        rows.append(median_row(scenario, name, "latency_s_repeat", repeat[name], hit_rate=hit_rate))
        rows.append(median_row(scenario, name, "latency_s_all", every[name], hit_rate=hit_rate))
    for metric, values in (("latency_s_repeat", repeat), ("latency_s_all", every)):
        ratio = statistics.median(values[CACHE]) / statistics.median(values[NO_CACHE])
        rows.append(row(scenario, RATIO, metric, round(ratio, 3)))
    return rows


def _vision_stats(engine):
    return engine.cache_stats().get("vision")


def _hit_rate(before, after) -> float | None:
    if after is None:
        return None
    hits = after.hits - (before.hits if before else 0)
    looked_up = hits + after.misses - (before.misses if before else 0)
    return round(hits / looked_up, 3) if looked_up else None


# --- offline ------------------------------------------------------------------------------


def _duplicated_table(images):
    """Every image twice, in a shuffled order (duplicates spread through the batches)."""
    import io
    import random

    import pyarrow as pa

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    order = list(range(len(encoded))) * 2
    random.Random(7).shuffle(order)
    return pa.table({"id": [f"{i:03d}" for i in range(len(order))],
                     "image": [encoded[i] for i in order]})


def _stage_rows(scenario: str, folder: str, table, tokens: int, batch: int) -> list[dict]:
    """The job's two stages in this process, as one model actor runs them."""
    from batch_jobs.config import job_config_for
    from batch_jobs.stages import ModelStage, PreprocessStage
    from bench.report import median_row, row

    from raysight.spec import ModelSpec

    rows: list[dict] = []
    rates: dict[str, list[float]] = {CACHE: [], NO_CACHE: []}
    stats: dict = {}
    for _ in range(2):  # alternate the variants twice; fresh stages (empty caches) each time
        for name, settings in ((NO_CACHE, CACHES_OFF), (CACHE, {})):
            spec = ModelSpec(model=folder, max_batch_size=batch, **settings)
            job = job_config_for("caption", spec, "in-process", None, prompt=QUESTIONS[2],
                                 max_new_tokens=tokens, batch_size=batch)
            preprocess, model = PreprocessStage(job), ModelStage(job)
            started = time.perf_counter()
            for start in range(0, table.num_rows, batch):
                out = model(preprocess(table.slice(start, batch)))
                if any(error is not None for error in out["error"].to_pylist()):
                    raise RuntimeError(f"offline rows failed: {out['error'].to_pylist()}")
            rates[name].append(table.num_rows / (time.perf_counter() - started))
            stats[name] = (preprocess.engine.cache_stats(), model.engine.cache_stats())
    for name in (NO_CACHE, CACHE):
        processed, modelled = stats[name]
        extra = {}
        if name == CACHE:
            extra = {"hit_rate": round(modelled["vision"].hit_rate, 3),
                     "preprocess_hit_rate": round(processed["preprocess"].hit_rate, 3)}
        rows.append(median_row(scenario, f"{name} (stages in-process)", "images_per_s",
                               rates[name], **extra))
    ratio = statistics.median(rates[CACHE]) / statistics.median(rates[NO_CACHE])
    rows.append(row(scenario, f"{RATIO} (stages in-process)", "images_per_s", round(ratio, 3)))
    return rows


def _ray_job_rows(scenario: str, folder: str, table, tokens: int, batch: int) -> list[dict]:
    """The real caption job (Ray Data, its own actors) over the same rows, per variant."""
    from batch_jobs.config import job_config_for
    from batch_jobs.pipeline import run_job
    from bench.report import median_row, row

    from raysight.spec import ModelSpec

    import ray

    local = None
    if not ray.is_initialized():
        from raysight.local_ray import start_local_ray

        # Logical CPUs as the integration tests give them: with only 2, the two stages'
        # actors hold 1.5 and a 1-CPU read task can wait behind them for good.
        local = start_local_ray(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                                log_to_driver=False, configure_logging=False)
    rates: dict[str, list[float]] = {CACHE: [], NO_CACHE: []}
    with tempfile.TemporaryDirectory(prefix="raysight-caching-") as scratch:
        source = Path(scratch) / "images"  # a folder of PNG files, duplicates byte for byte
        source.mkdir()
        for name, data in zip(table["id"].to_pylist(), table["image"].to_pylist()):
            (source / f"{name}.png").write_bytes(data)
        for name, settings in ((NO_CACHE, CACHES_OFF), (CACHE, {})):
            spec = ModelSpec(model=folder, max_batch_size=batch, **settings)
            job = job_config_for("caption", spec, str(source), str(Path(scratch) / name),
                                 prompt=QUESTIONS[2], max_new_tokens=tokens, batch_size=batch,
                                 progress=False, overwrite=True)
            summary = run_job(job)
            if summary.failures:
                raise RuntimeError(f"the offline job failed rows: {summary.failure_reasons}")
            rates[name].append(summary.images_per_s)
    if local is not None:
        local.stop()
    rows = [median_row(scenario, f"{name} (ray data job)", "images_per_s", rates[name])
            for name in (NO_CACHE, CACHE)]
    ratio = statistics.median(rates[CACHE]) / statistics.median(rates[NO_CACHE])
    rows.append(row(scenario, f"{RATIO} (ray data job)", "images_per_s", round(ratio, 3)))
    return rows


def run(quick: bool) -> list[dict]:
    """Every caching scenario's rows (``scenario, variant, metric, value`` plus extras)."""
    import torch

    from raysight.engines import build_engine
    from raysight.spec import ModelSpec

    torch.set_num_threads(os.cpu_count() or 1)
    size, side, tokens = _size(quick)
    folder = _model_folder(size)
    engines = {
        NO_CACHE: build_engine(ModelSpec(model=folder, **CACHES_OFF)),
        CACHE: build_engine(ModelSpec(model=folder)),
    }
    sessions = 2 if quick else 5
    warmup = _images(1, side, seed=0)[0]
    for engine in engines.values():  # first calls pay one-off costs (allocations, kernels)
        _timed(engine, _questions(warmup, tokens)[:2])
    rows = _latency_rows("caching_chat_4_turns", engines, _chat_turns,
                         _images(sessions, side, seed=1), tokens)
    rows += _latency_rows("caching_4_questions", engines, _questions,
                          _images(sessions, side, seed=2), tokens)
    del engines
    table = _duplicated_table(_images(4 if quick else 32, side, seed=3))
    batch = 8
    offline = "caching_offline_50pct_duplicates"
    rows += _stage_rows(offline, folder, table, tokens, batch)
    rows += _ray_job_rows(offline, folder, table, tokens, batch)
    return rows


if __name__ == "__main__":
    import sys

    for result in run(quick="--quick" in sys.argv):
        print(json.dumps(result))
