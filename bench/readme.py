"""Render the README's ``## Benchmarks`` tables from a results file.

    python -m bench.readme [bench/results/latest.json]

Prints Markdown: the targets, then each scenario's figures. The prose around them (what
bounds a missed target) is written by hand in the README.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.plots import LABELS

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
BOUNDS = ("generation_split", "embeddings_cpu_split", "offline_cpu_split")


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"


def targets_table(payload: dict) -> str:
    lines = ["| target | measured | status |", "|---|---|---|"]
    for target in payload["targets"]:
        measured = "-" if target["measured"] is None else f"{target['measured']:.3f}"
        lines.append(f"| {target['target']} {target['threshold']} | {measured} | "
                     f"{target['status']} |")
    return "\n".join(lines)


def online_table(rows: list[dict], scenario: str, metric: str, unit: str) -> str:
    """Variants down, client counts across: throughput, then p50 / p99 latency."""
    mine = [r for r in rows if r["scenario"] == scenario]
    clients = sorted({r["clients"] for r in mine})
    figures: dict[tuple, float] = {(r["variant"], r["metric"], r["clients"]): r["value"]
                                   for r in mine}
    variants = list(dict.fromkeys(r["variant"] for r in mine))
    header = " | ".join(f"{c} clients: {unit}, p50 / p99 ms" for c in clients)
    lines = [f"| variant | {header} |", "|---" * (len(clients) + 1) + "|"]
    for variant in variants:
        cells = []
        for c in clients:
            value = figures.get((variant, metric, c))
            p50, p99 = figures.get((variant, "p50_ms", c)), figures.get((variant, "p99_ms", c))
            cells.append("-" if value is None else
                         f"**{_number(value)}**, {p50:,.0f} / {p99:,.0f}")
        lines.append(f"| {LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def simple_table(rows: list[dict], scenarios: tuple[str, ...]) -> str:
    lines = ["| scenario | variant | metric | median | repeats |", "|---|---|---|---|---|"]
    for r in rows:
        if r["scenario"] in scenarios:
            repeats = ", ".join(_number(v) for v in r.get("repeats") or [])
            where = f" (batch {r['batch']})" if "batch" in r and r["scenario"] == "batch_sweep" else ""
            unit = f" {r['unit']}" if r.get("unit") else ""
            lines.append(f"| {r['scenario']} | {r['variant']}{where} | {r['metric']} | "
                         f"{_number(r['value'])}{unit} | {repeats} |")
    return "\n".join(lines)


def render(payload: dict) -> str:
    rows = payload["rows"]
    by_scenario = defaultdict(list)
    for r in rows:
        by_scenario[r["scenario"]].append(r)
    parts = ["Targets (ratios are measured side by side in one run):", "",
             targets_table(payload), ""]
    if "online_embeddings" in by_scenario:
        parts += ["Online embeddings (`/v1/embeddings`, one 224 px JPEG per request; each "
                  "raysight app through Serve's proxy):", "",
                  online_table(rows, "online_embeddings", "throughput", "img/s"), ""]
    if "online_embeddings_direct" in by_scenario:
        parts += ["Online embeddings with direct ingress, `raysight serve`'s default for one "
                  "model (its own Ray, right after; its own ceiling and reference):", "",
                  online_table(rows, "online_embeddings_direct", "throughput", "img/s"), ""]
    if "online_generation" in by_scenario:
        parts += ["Online generation (chat completion, one image, 16 new tokens):", "",
                  online_table(rows, "online_generation", "tokens_per_s", "tokens/s"), ""]
    bounds = tuple(s for s in BOUNDS if s in by_scenario)
    if bounds:
        parts += ["Where the time and the cores go (`bench/bounds.py`; cores = CPU seconds "
                  "over wall seconds, of the machine's 2):", "", simple_table(rows, bounds), ""]
    others = tuple(s for s in by_scenario if s not in ("online_embeddings",
                                                        "online_embeddings_direct",
                                                        "online_generation") + BOUNDS)
    if others:
        parts += [simple_table(rows, others), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else RESULTS
    print(render(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
