"""Rows of figures, the targets they are held to, the printed table and the JSON file.

Every figure is a row: ``{"scenario", "variant", "metric", "value", ...}`` plus optional
keys (``clients``, ``unit``, ``repeats`` - the per-repeat values the median came from).
The caching benchmark (``bench/caching.py``) returns rows of the same shape.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def row(scenario: str, variant: str, metric: str, value: float, **extra: Any) -> dict:
    return {"scenario": scenario, "variant": variant, "metric": metric, "value": value, **extra}


def median_row(scenario: str, variant: str, metric: str, repeats: list[float],
               **extra: Any) -> dict:
    """A row whose value is the median of `repeats` (kept in the row)."""
    values = [round(v, 4) for v in repeats]
    return row(scenario, variant, metric, round(statistics.median(repeats), 4),
               repeats=values, **extra)


def find(rows: list[dict], scenario: str, variant: str, metric: str,
         clients: int | None = None) -> float | None:
    for candidate in rows:
        if (candidate["scenario"], candidate["variant"], candidate["metric"]) == (
                scenario, variant, metric) and candidate.get("clients") == clients:
            return candidate["value"]
    return None


@dataclass(frozen=True)
class Target:
    """`measured` (a ratio of two rows, or one row) must be >= (or <=) `threshold`."""

    name: str
    scenario: str
    metric: str
    variant: str
    baseline: str | None  # None: the row itself is compared, not a ratio
    threshold: float
    clients: int | None = None
    at_most: bool = False

    def evaluate(self, rows: list[dict]) -> dict:
        value = find(rows, self.scenario, self.variant, self.metric, self.clients)
        if self.baseline is not None and value is not None:
            base = find(rows, self.scenario, self.baseline, self.metric, self.clients)
            value = value / base if base else None
        if value is None:
            status = "NOT RUN"
        elif self.at_most:
            status = "PASS" if value <= self.threshold else "MISS"
        else:
            status = "PASS" if value >= self.threshold else "MISS"
        sign = "<=" if self.at_most else ">="
        return {"target": self.name, "measured": None if value is None else round(value, 3),
                "threshold": f"{sign} {self.threshold:g}", "status": status}


TARGETS = (
    # What `raysight serve` of one model runs by default on its private Ray: direct ingress
    # behind raysight's relay (bench/online_direct.py)...
    Target("online embeddings, default (direct ingress), 32 clients: raysight / ceiling",
           "online_embeddings_direct", "throughput", "raysight_direct", "ceiling", 0.95,
           clients=32),
    Target("online embeddings, default (direct ingress), 32 clients: raysight / reference",
           "online_embeddings_direct", "throughput", "raysight_direct", "reference", 1.0,
           clients=32),
    Target("online embeddings, default (direct ingress), 8 clients: raysight / ceiling",
           "online_embeddings_direct", "throughput", "raysight_direct", "ceiling", 0.9,
           clients=8),
    Target("online embeddings, default (direct ingress), 1 client: p50 over the in-process (ms)",
           "online_embeddings_direct", "p50_over_ceiling_ms", "raysight_direct", None, 15.0,
           clients=1, at_most=True),
    Target("online embeddings, default (direct ingress), 32 clients: CPU-ms outside the replica",
           "online_embeddings_direct", "cpu_ms_outside_replica", "raysight_direct", None, 8.0,
           clients=32, at_most=True),
    # ...and the same targets through Serve's proxy: the path of several models or replicas,
    # or a cluster (bench/online.py).
    Target("online embeddings, through Serve's proxy, 32 clients: raysight / ceiling",
           "online_embeddings", "throughput", "raysight", "ceiling", 0.95, clients=32),
    Target("online embeddings, through Serve's proxy, 32 clients: raysight / reference",
           "online_embeddings", "throughput", "raysight", "reference", 1.0, clients=32),
    Target("online embeddings, through Serve's proxy, 8 clients: raysight / ceiling",
           "online_embeddings", "throughput", "raysight", "ceiling", 0.9, clients=8),
    Target("online embeddings, through Serve's proxy, 1 client: p50 over the in-process (ms)",
           "online_embeddings", "p50_over_ceiling_ms", "raysight", None, 15.0, clients=1,
           at_most=True),
    Target("online embeddings, through Serve's proxy, 32 clients: CPU-ms outside the replica",
           "online_embeddings", "cpu_ms_outside_replica", "raysight", None, 8.0, clients=32,
           at_most=True),
    Target("online embeddings, 32 clients: raysight / Flask", "online_embeddings",
           "throughput", "raysight", "flask", 1.5, clients=32),
    Target("online generation, 32 clients: raysight / Flask (tokens/s)", "online_generation",
           "tokens_per_s", "raysight", "flask", 3.0, clients=32),
    Target("online generation, 32 clients: raysight / batched generate", "online_generation",
           "tokens_per_s", "raysight", "ceiling", 0.95, clients=32),
    Target("offline embed: embed job / plain loop", "offline_embed", "images_per_s",
           "embed_job", "plain_loop", 1.0),
    Target("batch sweep: max_batch_size auto's pick / the best size (throughput)",
           "batch_sweep", "auto_vs_best", "embed_forward", None, 0.95),
    Target("cold start: raysight serve to first answer (s)", "cold_start", "seconds",
           "raysight_serve", None, 20.0, at_most=True),
    Target("reliability soak: errors", "reliability", "errors", "soak", None, 0, at_most=True),
    Target("reliability soak: replica RSS growth (%)", "reliability", "rss_growth_pct", "soak",
           None, 10.0, at_most=True),
    Target("reliability overload: 503 p99 (ms)", "reliability", "refused_p99_ms", "overload",
           None, 250.0, at_most=True),
    Target("reliability overload: admitted requests that failed", "reliability",
           "admitted_failed", "overload", None, 0, at_most=True),
    Target("reliability overload: first request after the burst succeeded", "reliability",
           "first_after_ok", "overload", None, 1),
    Target("reliability, 1 of 2 replicas killed: 500s", "reliability", "errors_500",
           "kill_1_of_2_replicas", None, 0, at_most=True),
    Target("reliability, only replica killed: 500s", "reliability", "errors_500",
           "kill_only_replica", None, 0, at_most=True),
    Target("reliability, only replica killed: seconds to first success", "reliability",
           "recovery_s", "kill_only_replica", None, 10.0, at_most=True),
    Target("mixed generation: short-request p50 latency, continuous / static",
           "generation_mixed", "short_p50_ms", "continuous/static", None, 0.5, at_most=True),
    Target("mixed generation: p99 time to first token, continuous / static",
           "generation_mixed", "ttft_p99_ms", "continuous/static", None, 0.5, at_most=True),
    Target("mixed generation: output tokens/s, continuous / static", "generation_mixed",
           "tokens_per_s", "continuous/static", None, 1.0),
    Target("mixed generation: capacity on a burst, continuous / static", "generation_mixed",
           "capacity_rps", "continuous/static", None, 1.0),
    Target("closed-loop generation (8 clients, 16 tokens): continuous / static tokens/s",
           "generation_mixed", "closed_tokens_per_s", "continuous/static", None, 1.0),
)


def evaluate_targets(rows: list[dict], scenarios: set[str]) -> list[dict]:
    return [t.evaluate(rows) for t in TARGETS if t.scenario in scenarios]


def format_table(rows: list[dict]) -> str:
    """One line per figure: scenario, variant, clients, metric, median and repeats."""
    header = f"{'scenario':20s} {'variant':16s} {'clients':>7s} {'metric':14s} {'value':>10s}  repeats"
    lines = [header, "-" * len(header)]
    for r in rows:
        clients = "" if r.get("clients") is None else str(r["clients"])
        repeats = r.get("repeats")
        shown = "" if not repeats else " ".join(_number(v) for v in repeats)
        unit = f" {r['unit']}" if r.get("unit") else ""
        lines.append(f"{r['scenario'][:20]:20s} {str(r['variant'])[:16]:16s} {clients:>7s} "
                     f"{str(r['metric'])[:14]:14s} {_number(r['value']):>10s}{unit}  {shown}")
    return "\n".join(lines)


def format_targets(results: list[dict]) -> str:
    lines = []
    for result in results:
        measured = "-" if result["measured"] is None else f"{result['measured']:.3f}"
        lines.append(f"  [{result['status']:7s}] {result['target']}: {measured} "
                     f"(target {result['threshold']})")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
