"""How long and how hard each scenario runs: the full run, and --quick for a smoke test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """Every knob of a run. Figures are medians over `repeats` runs of each measurement."""

    quick: bool = False
    repeats: int = 3
    # 1, 8 and 32 clients are where the targets are; 64 (past max_ongoing_requests' batch)
    # was dropped to keep `make bench` under 15 minutes.
    embed_clients: tuple[int, ...] = (1, 8, 32)
    chat_clients: tuple[int, ...] = (1, 8, 32)
    # One closed-loop measurement: a warm-up until every client has had an answer, then
    # `repeats` windows this long, the first lasting until every client has had one more
    # (see bench/loadgen.py).
    embed_window_s: float = 1.0
    # The 1-client latency target: requests over HTTP and in this process, side by side
    # (bench/paired_latency.py).
    latency_pairs: int = 24
    chat_window_s: float = 1.0
    new_tokens: int = 16
    chat_max_batch_size: int = 32  # one batch holds every client of the 32-client point
    chat_batch_wait_s: float | None = None  # the ModelSpec's batch_wait_timeout_s if None
    sweep_batches: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    sweep_window_s: float = 1.0
    auto_sweep_budget_s: float = 5.0  # max_batch_size: auto's own sweep (auto_batch.budget_s)
    offline_images: int = 4000
    offline_repeats: int = 1  # passes of the job: one over 4,000 images takes ~4.5 minutes
    offline_loop_segment_s: float = 8.0  # the plain loop's repeats: stretches this long
    cold_start_repeats: int = 3
    cold_start_timeout_s: float = 120.0
    # serve_batch (bench/serve_batch.py): DrainBatcher vs @serve.batch vs max_batch_size=1.
    serve_batch_clients: int = 32
    serve_batch_window_s: float = 2.0
    # generation_mixed (bench/generation_mixed.py): open-loop requests per scheduler, and
    # the closed-loop check's window per repeat.
    mixed_requests: int = 64
    mixed_closed_window_s: float = 20.0

    @property
    def max_clients(self) -> int:
        return max(self.embed_clients + self.chat_clients)


FULL = BenchSettings()
QUICK = BenchSettings(
    quick=True, repeats=1, embed_clients=(1, 8), chat_clients=(1, 8), embed_window_s=0.5,
    chat_window_s=0.5, latency_pairs=3, new_tokens=8, chat_max_batch_size=8,
    sweep_batches=(1, 8), sweep_window_s=0.2, auto_sweep_budget_s=1.0, offline_images=64,
    offline_loop_segment_s=1.0,
    cold_start_repeats=1, serve_batch_clients=8, serve_batch_window_s=0.5,
    mixed_requests=16, mixed_closed_window_s=1.0,
)
