"""Batch-size sweep: the engine's forward (preprocessed inputs, no HTTP) at each batch
size. The benchmark CLIP's best size is the max_batch_size the online and offline runs use;
the built-in shapes-clip's best is the max_batch_size serve_app/config.yaml gives it."""

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
    figures: dict[int, list[float]] = {size: [] for size in settings.sweep_batches}
    for repeat in range(settings.repeats):
        order = settings.sweep_batches if repeat % 2 == 0 else settings.sweep_batches[::-1]
        for size in order:
            figures[size].append(runner.measure(size, window_s, forward_only=True).items_per_s)
    medians = {size: statistics.median(values) for size, values in figures.items()}
    fastest = max(medians.values())
    best = min(size for size, value in medians.items() if value >= 0.97 * fastest)
    rows = [median_row(SCENARIO, variant, "throughput", values, unit="img/s", batch=size)
            for size, values in figures.items()]
    rows.append(row(SCENARIO, variant, "best_batch", best))
    log(f"  {variant}: " + ", ".join(f"batch {size}: {medians[size]:.1f} img/s"
                                     for size in medians) + f" -> best {best}")
    return rows, best
