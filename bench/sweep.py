"""Batch-size sweep: the engine's forward (preprocessed inputs, no HTTP) at each batch
size; the best one becomes the max_batch_size the online and offline runs use."""

from __future__ import annotations

import statistics
from typing import Callable

from bench.inprocess import EngineRunner
from bench.report import median_row, row
from bench.settings import BenchSettings

SCENARIO = "batch_sweep"


def batch_sweep(folder: str, settings: BenchSettings,
                log: Callable[[str], None]) -> tuple[list[dict], int]:
    """Rows of images/s per batch size, and the best batch size.

    Past the best size a bigger batch buys nothing on a CPU (the cores are already busy)
    and only adds latency, so a size within 3% of the fastest counts as the fastest and
    the smallest such size wins.
    """
    runner = EngineRunner(folder, max(settings.sweep_batches))
    figures: dict[int, list[float]] = {size: [] for size in settings.sweep_batches}
    for repeat in range(settings.repeats):
        order = settings.sweep_batches if repeat % 2 == 0 else settings.sweep_batches[::-1]
        for size in order:
            figures[size].append(runner.measure(size, settings.sweep_window_s,
                                                forward_only=True).items_per_s)
    medians = {size: statistics.median(values) for size, values in figures.items()}
    fastest = max(medians.values())
    best = min(size for size, value in medians.items() if value >= 0.97 * fastest)
    rows = [median_row(SCENARIO, "embed_forward", "throughput", values, unit="img/s",
                       batch=size) for size, values in figures.items()]
    rows.append(row(SCENARIO, "embed_forward", "best_batch", best))
    log("  " + ", ".join(f"batch {size}: {medians[size]:.1f} img/s" for size in medians)
        + f" -> best {best}")
    return rows, best
