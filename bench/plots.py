"""PNG plots of a run's rows (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

STYLE = {
    "raysight": dict(color="tab:blue", marker="o"),
    "ceiling": dict(color="black", marker="", linestyle="--"),
    "flask": dict(color="tab:red", marker="s"),
    "reference": dict(color="tab:green", marker="D"),
    "raysight_mbs1": dict(color="tab:orange", marker="^"),
}
LABELS = {
    "raysight": "raysight (drain batcher)",
    "ceiling": "ceiling: engine in-process, batched",
    "flask": "Flask + ThreadPoolExecutor",
    "reference": "single-process batching server (asyncio, no Ray)",
    "raysight_mbs1": "raysight, max_batch_size=1",
    "raysight_direct": "raysight, direct ingress behind the relay (no Serve proxy)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Scenarios whose figures are counts and times of different kinds, shown as a table in the
# README: one bar chart over all of them would say nothing.
TABLE_ONLY = frozenset({"reliability"})


def plot_all(rows: list[dict], targets: list[dict], folder: Path, title_note: str) -> list[Path]:
    """Draw every plot the rows allow; return the files written."""
    written = []
    by_scenario: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_scenario[r["scenario"]].append(r)
    for scenario, mine in by_scenario.items():
        if scenario in TABLE_ONLY:
            continue
        if any(r.get("clients") is not None for r in mine):
            written.append(_clients_plot(scenario, mine, folder, title_note))
        elif scenario == "batch_sweep":
            written.append(_sweep_plot(mine, folder, title_note))
        else:
            written.append(_bar_plot(scenario, mine, folder, title_note))
    if targets:
        written.append(_targets_plot(targets, folder, title_note))
    return written


def _clients_plot(scenario: str, rows: list[dict], folder: Path, note: str) -> Path:
    plt = _pyplot()
    metric = next(r["metric"] for r in rows if r["metric"] not in ("p50_ms", "p99_ms",
                                                                   "mean_batch"))
    unit = next((r.get("unit") for r in rows if r["metric"] == metric), "") or ""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for axis, name in ((left, metric), (right, "p99_ms")):
            points = sorted((r["clients"], r["value"]) for r in rows
                            if r["variant"] == variant and r["metric"] == name)
            if points:
                axis.plot(*zip(*points), label=LABELS.get(variant, variant),
                          **STYLE.get(variant, {}))
    left.set(xlabel="concurrent clients", ylabel=f"{metric} ({unit})", title="throughput")
    right.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", yscale="log",
              title="p99 latency (ceiling: per batch)")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    figure.suptitle(f"{scenario.replace('_', ' ')} - {note}", fontsize=10)
    figure.tight_layout()
    return _save(figure, folder / f"{scenario}.png")


def _sweep_plot(rows: list[dict], folder: Path, note: str) -> Path:
    plt = _pyplot()
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    figure, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4),
                                squeeze=False)
    for axis, variant in zip(axes[0], variants):
        mine = [r for r in rows if r["variant"] == variant]
        points = sorted((r["batch"], r["value"]) for r in mine if r["metric"] == "throughput")
        best = next((r["value"] for r in mine if r["metric"] == "best_batch"), None)
        axis.plot(*zip(*points), marker="o")
        if best is not None:
            axis.axvline(best, color="tab:green", linestyle=":", label=f"chosen: {best}")
            axis.legend()
        axis.set(xlabel="batch size", ylabel="images/s (forward only)", title=variant)
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    figure.suptitle(f"batch-size sweep - {note}", fontsize=10)
    figure.tight_layout()
    return _save(figure, folder / "batch_sweep.png")


def _bar_plot(scenario: str, rows: list[dict], folder: Path, note: str) -> Path:
    plt = _pyplot()
    metrics = list(dict.fromkeys(r["metric"] for r in rows
                                 if isinstance(r.get("value"), (int, float))))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8),
                                squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        chosen = [r for r in rows if r["metric"] == metric]
        labels = [str(r["variant"]) for r in chosen]
        axis.bar(labels, [r["value"] for r in chosen],
                 color=[STYLE.get(label, {}).get("color", "tab:blue") for label in labels])
        unit = chosen[0].get("unit") or ""
        axis.set(ylabel=f"{metric} {unit}".strip(), title=metric)
        axis.tick_params(axis="x", labelrotation=20)
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(f"{scenario.replace('_', ' ')} - {note}", fontsize=10)
    figure.tight_layout()
    return _save(figure, folder / f"{scenario}.png")


def _score(target: dict) -> float:
    """How far past its target a figure is: above 1 meets it, for <= and >= targets alike."""
    sign, threshold = target["threshold"].split()
    limit, measured = float(threshold), float(target["measured"])
    better, worse = (limit, measured) if sign == "<=" else (measured, limit)
    if worse <= 0:  # a target of 0 (at most 0 errors): met exactly, or not at all
        return 2.0 if better >= worse else 0.0
    return better / worse


def _targets_plot(targets: list[dict], folder: Path, note: str) -> Path:
    plt = _pyplot()
    shown = [t for t in targets if t["measured"] is not None]
    figure, axis = plt.subplots(figsize=(9, 0.6 * len(shown) + 1.2))
    for index, target in enumerate(shown):
        score = _score(target)
        colour = "tab:green" if target["status"] == "PASS" else "tab:red"
        axis.barh(index, score, color=colour)
        axis.text(score, index, f" {target['measured']:.3g} (target {target['threshold']})",
                  va="center", fontsize=8)
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_yticks(range(len(shown)), [t["target"] for t in shown], fontsize=8)
    axis.invert_yaxis()
    axis.set(xlabel="measured / target (>= 1 meets it)", title=f"targets - {note}")
    axis.set_xlim(0, max([1.6] + [1.45 * _score(t) for t in shown]))
    figure.tight_layout()
    return _save(figure, folder / "targets.png")


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path
