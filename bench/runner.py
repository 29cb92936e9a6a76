"""Run the chosen scenarios in an order that keeps them apart, then report.

Order: the batch-size sweep and the cold start need no Ray in this process; the online
scenarios share one private local Ray (Serve apps are deleted between them); the offline
job and then the caching benchmark (bench/caching.py, when present) run on the same Ray
once Serve is gone, so a job never attaches to some other Ray running on the machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.report import evaluate_targets, format_table, format_targets, write_json
from bench.settings import BenchSettings

SCENARIOS = ("batch_sweep", "cold_start", "online_embeddings", "online_generation",
             "offline_embed", "caching", "serve_batch", "reliability", "generation_mixed",
             "online_embeddings_direct")
# `make bench`: the throughput scenarios. The caching benchmark (~5 min), the batcher
# comparison (serve_batch), the reliability scenario (~4 min, its own `raysight serve`) and
# the scheduler comparison (generation_mixed, ~4 min) run on their own (`--only`); their
# rows stay in latest.json from their last run.
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS
                          if s not in ("caching", "serve_batch", "reliability",
                                       "generation_mixed"))
RAY_SCENARIOS = {"online_embeddings", "online_generation", "offline_embed", "caching",
                 "serve_batch"}
DEFAULT_EMBED_BATCH = 16


@dataclass(frozen=True)
class RunOptions:
    settings: BenchSettings
    scenarios: tuple[str, ...]
    out: Path


def machine() -> dict:
    import ray
    import torch
    import transformers

    load = os.getloadavg()
    return {
        "cpu_cores": os.cpu_count(), "cpu": _cpu_name(), "gpu": torch.cuda.is_available(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__, "ray": ray.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "load_average_1m_at_start": round(load[0], 2),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _previous_best_batch(out: Path) -> int:
    """The best batch size a previous run's sweep recorded (when only other scenarios run)."""
    try:
        rows = json.loads((out / "latest.json").read_text())["rows"]
        return int(next(r["value"] for r in rows if r["metric"] == "best_batch"
                        and r["variant"] == "embed_forward"))
    except (OSError, ValueError, KeyError, StopIteration):
        return DEFAULT_EMBED_BATCH


def caching_module():
    """bench/caching.py (another benchmark, owned by the caching work) if it exists."""
    if importlib.util.find_spec("bench.caching") is None:
        return None
    import bench.caching

    return bench.caching


def run(options: RunOptions, log: Callable[[str], None] = print) -> dict:
    """Run the scenarios; write latest.json and the plots into options.out; return the
    JSON payload."""
    from bench.models import bench_models

    settings, chosen = options.settings, set(options.scenarios)
    started = time.perf_counter()
    info = machine()
    models = bench_models(settings.quick)
    for model in models.values():
        log(f"model ({model.role}): {model.describe()}")
    rows: list[dict] = []
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], list[dict]]) -> None:
        log(f"== {name}")
        began = time.perf_counter()
        rows.extend(step())
        timings[name] = round(time.perf_counter() - began, 1)
        # What is done so far survives a run that is stopped or fails later.
        write_json(options.out / "partial.json", {"scenario_seconds": timings, "rows": rows})

    embed, vlm = models["embed"].folder, models["generate"].folder
    best = _previous_best_batch(options.out)
    if "batch_sweep" in chosen:
        from bench.sweep import batch_sweep

        def sweep() -> list[dict]:
            nonlocal best
            sweep_rows, best = batch_sweep(embed, settings, log)
            if not settings.quick:  # tiny and fast: a short window is enough
                sweep_rows += batch_sweep("builtin:shapes-clip", settings, log,
                                          variant="builtin_shapes_clip", window_s=0.3)[0]
            return sweep_rows

        timed("batch_sweep", sweep)
    log(f"embed max_batch_size: {best}")
    if "generation_mixed" in chosen:  # in this process, no Ray: see bench/generation_mixed.py
        from bench.generation_mixed import generation_mixed

        timed("generation_mixed", lambda: generation_mixed(vlm, settings, log))
    if "cold_start" in chosen:
        from bench.coldstart import cold_start

        timed("cold_start", lambda: cold_start(embed, settings, log))
    if "reliability" in chosen:
        from bench.reliability import reliability

        # Its own `raysight serve` process with a private Ray: none in this process.
        timed("reliability", lambda: reliability(settings, log))
    if chosen & RAY_SCENARIOS:
        _ray_scenarios(chosen, embed, vlm, best, settings, log, timed)
    if "online_embeddings_direct" in chosen:  # a Ray of its own, started for direct ingress
        from bench.online_direct import online_embeddings_direct

        timed("online_embeddings_direct",
              lambda: online_embeddings_direct(embed, best, settings, log))
    targets = evaluate_targets(rows, {r["scenario"] for r in rows})
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    payload = {
        "quick": settings.quick,
        "run_seconds": round(time.perf_counter() - started, 1),
        "scenario_seconds": timings,
        "machine": info,
        "models": {role: {"architecture": m.architecture, "size": m.size_name,
                          "params": m.params, "vision_params": m.vision_params}
                   for role, m in models.items()},
        "settings": {"embed_max_batch_size": best,
                     "chat_max_batch_size": settings.chat_max_batch_size,
                     "repeats": settings.repeats, "offline_repeats": settings.offline_repeats},
        "rows": rows,
        "targets": targets,
    }
    return _report(payload, options, log)


def _ray_scenarios(chosen: set[str], embed: str, vlm: str, best: int,
                   settings: BenchSettings, log: Callable[[str], None],
                   timed: Callable[[str, Callable[[], list[dict]]], None]) -> None:
    from raysight.local_ray import start_local_ray
    from serve_app.proxy_edge import install

    install()  # as `raysight serve` does before it starts its local Ray
    local = start_local_ray(log_to_driver=False, include_dashboard=False,
                            configure_logging=False)
    try:
        if "online_embeddings" in chosen:
            from bench.online import online_embeddings

            timed("online_embeddings", lambda: online_embeddings(embed, best, settings, log))
        if "online_generation" in chosen:
            from bench.online import online_generation

            timed("online_generation", lambda: online_generation(vlm, settings, log))
        if "serve_batch" in chosen:
            from bench.serve_batch import serve_batch

            timed("serve_batch", lambda: serve_batch(embed, settings, log))
        from ray import serve

        serve.shutdown()
        if "offline_embed" in chosen:
            from bench.offline import offline_embed

            # The model stage gets every core, as one single-threaded actor per core
            # (`--actor-pool-size N --torch-threads 1`): on a CPU node decoding a JPEG costs
            # ~1/20 of its forward, and N one-thread forwards side by side ran 1.16x one
            # forward on N threads (2 cores, 2,000 images; no barrier between threads).
            actors = os.cpu_count() or 1
            timed("offline_embed",
                  lambda: offline_embed(embed, best, actors, 1, settings, log))
        if "caching" in chosen:
            module = caching_module()
            if module is None:
                log("== caching: bench/caching.py is not there; skipped")
            else:
                timed("caching", lambda: [dict(r) for r in module.run(settings.quick)])
    finally:
        local.stop()


def _report(payload: dict, options: RunOptions, log: Callable[[str], None]) -> dict:
    from bench.plots import plot_all

    out = options.out
    previous = out / "latest.json"
    rows = payload["rows"]
    ran = {r["scenario"] for r in rows}
    if previous.exists() and set(options.scenarios) != set(SCENARIOS):
        # --only: keep the other scenarios' rows of the last run, so the file stays whole.
        try:
            kept = [r for r in json.loads(previous.read_text())["rows"] if r["scenario"] not in ran]
        except (ValueError, KeyError):
            kept = []
        payload["rows"] = rows = kept + rows
        payload["targets"] = evaluate_targets(rows, {r["scenario"] for r in rows})
    write_json(previous, payload)
    (out / "partial.json").unlink(missing_ok=True)
    m = payload["machine"]
    note = f"{m['cpu_cores']} CPU cores, {'GPU' if m['gpu'] else 'no GPU'}, torch {m['torch']}"
    plots = plot_all(rows, payload["targets"], out, note)
    log("")
    log(format_table(rows))
    log("")
    log("targets:")
    log(format_targets(payload["targets"]))
    log(f"\nwrote {previous} and {len(plots)} plots; run took {payload['run_seconds']:.0f} s")
    return payload
