"""Batch-size sweep: the engine's forward (preprocessed inputs, no HTTP) at each batch
size. The benchmark CLIP's best size is the max_batch_size the online and offline runs use;
the built-in shapes-clip's best is the max_batch_size serve_app/config.yaml gives it.

It also checks `max_batch_size: auto` (raysight/autobatch.py): the start-up sweep runs on the
same engine first, and its pick is measured with the other sizes, so the pick's throughput
is compared with the best size's in the same run (target: within 5%)."""

from __future__ import annotations

import statistics
from typing import Callable

from bench.inprocess import EngineRunner
from bench.report import median_row, row
from bench.settings import BenchSettings

SCENARIO = "batch_sweep"


def batch_sweep(folder: str, settings: BenchSettings, log: Callable[[str], None],
                variant: str = "embed_forward", window_s: float | None = None,
                ) -> tuple[list[dict], int]:
    """Rows of images/s per batch size, and the best batch size.

    Past the best size a bigger batch buys nothing on a CPU (the cores are already busy)
    and only adds latency, so a size within 3% of the fastest counts as the fastest and
    the smallest such size wins.
    """
    runner = EngineRunner(folder, max(settings.sweep_batches))
    window_s = settings.sweep_window_s if window_s is None else window_s
    auto = auto_pick(runner.engine, max(settings.sweep_batches), settings.auto_sweep_budget_s)
    sizes = tuple(sorted(set(settings.sweep_batches) | {auto.size}))
    figures: dict[int, list[float]] = {size: [] for size in sizes}
    for repeat in range(settings.repeats):
        order = sizes if repeat % 2 == 0 else sizes[::-1]
        for size in order:
            figures[size].append(runner.measure(size, window_s, forward_only=True).items_per_s)
    medians = {size: statistics.median(values) for size, values in figures.items()}
    fastest = max(medians.values())
    best = min(size for size, value in medians.items() if value >= 0.97 * fastest)
    rows = [median_row(SCENARIO, variant, "throughput", values, unit="img/s", batch=size)
            for size, values in figures.items()]
    rows.append(row(SCENARIO, variant, "best_batch", best))
    auto_vs_best = round(medians[auto.size] / fastest, 3)
    rows += [row(SCENARIO, variant, "auto_pick", auto.size, sweep_s=auto.seconds,
                 sweep_throughput=auto.as_dict()["throughput"],
                 sweep_samples=auto.as_dict()["samples"], stopped=auto.stopped),
             row(SCENARIO, variant, "auto_vs_best", auto_vs_best)]
    log(f"  {variant}: " + ", ".join(f"batch {size}: {medians[size]:.1f} img/s"
                                     for size in medians) + f" -> best {best}")
    log(f"  {variant}: auto picked {auto.size} in a {auto.seconds:.1f} s sweep ({auto.describe()}); "
        f"its throughput is {auto_vs_best:.3f} x the best size's here")
    return rows, best


def auto_pick(engine, max_size: int, budget_s: float):
    """What `max_batch_size: auto` picks on this engine (its sweep, without the cache)."""
    from raysight.autobatch import sweep

    spec = engine.spec
    engine.spec = spec.model_copy(update={
        "max_batch_size": "auto",
        "auto_batch": spec.auto_batch.model_copy(update={"max_size": max_size,
                                                          "budget_s": budget_s}),
    })
    try:
        return sweep(engine)
    finally:
        engine.spec = spec
