"""The demo's printed report: what each job and route answered, checked against the drawing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raysight.cli.demo.offline import DrawnSet, OfflineResult
from raysight.cli.demo.online import SEARCH_K, SEARCH_QUERY, OnlineResult

MIN_ACCURACY = 0.9


@dataclass(frozen=True)
class Shutdown:
    """How the demo left the machine: Ray processes still running after shutdown (pids)."""

    ray_processes: int
    left: frozenset[int]
    checked: bool  # False where the process table cannot be read (no /proc)


def _name(path: str) -> str:
    return Path(path).name


def checks(drawn: DrawnSet, offline: OfflineResult, online: OnlineResult,
           shutdown: Shutdown) -> list[tuple[str, bool]]:
    """What a correct run shows, each with whether this run showed it."""
    broken = sorted(drawn.broken)
    return [
        (f"caption accuracy >= {MIN_ACCURACY}", offline.captions.accuracy >= MIN_ACCURACY),
        (f"classify accuracy >= {MIN_ACCURACY}", offline.classes.accuracy >= MIN_ACCURACY),
        ("only the broken files failed, in every job",
         all([row.path for row in rows] == broken for rows in offline.failed.values())),
        ("every online answer matches the drawing", all(e.right for e in online.exchanges)),
        (f'search top-{SEARCH_K} for "{SEARCH_QUERY}" all right',
         online.search_right == online.search_expected),
        ("no Ray processes left", not shutdown.left),
    ]


def offline_section(offline: OfflineResult, out: Path) -> list[str]:
    lines = ["Offline jobs (Ray Data)",
             f"  {'job':<9}{'rows':>6}{'failed':>8}{'seconds':>9}{'images/s':>10}  output"]
    for job in offline.jobs:
        lines.append(f"  {job.job:<9}{job.rows:>6}{job.failures:>8}{job.seconds:>9.1f}"
                     f"{job.images_per_s:>10.1f}  {Path(job.output).relative_to(out)}/")
    index = offline.index
    lines.append(f"  index: {index.rows} vectors (dim {index.dim}, {index.kind} FAISS) built in "
                 f"{index.seconds:.1f} s -> {Path(index.output).relative_to(out)}/")
    lines.append("")
    for title, scored, what in (("Caption accuracy", offline.captions, "captions"),
                                ("Classify accuracy", offline.classes, "top labels")):
        lines.append(f"{title}: {scored.accuracy:.3f} ({scored.right} of {scored.total} "
                     f"{what} equal the drawn label)")
        for path, expected, answered in scored.wrong:
            lines.append(f'  {_name(path)}: drawn "{expected}", answered "{answered}"')
        more = scored.total - scored.right - len(scored.wrong)
        if more:
            lines.append(f"  (and {more} more)")
    return lines


def failures_section(offline: OfflineResult) -> list[str]:
    rows = offline.failed["caption"]
    paths = [row.path for row in rows]
    same = all([row.path for row in other] == paths for other in offline.failed.values())
    scope = "each job" if same else "the caption job"
    lines = [f"Failed rows: {len(rows)} in {scope}, each with its reason (every other row has an "
             "answer)"]
    for row in rows:
        lines.append(f"  {_name(row.path):<19}{row.error_type:<14}{row.error}")
    if not same:
        for job, failed in offline.failed.items():
            lines.append(f"  {job}: {', '.join(_name(row.path) for row in failed) or 'none'}")
    return lines


def online_section(online: OnlineResult) -> list[str]:
    lines = [f"Online (Ray Serve at {online.url}, up in {online.startup_seconds:.1f} s)"]
    for exchange in online.exchanges:
        verdict = "right" if exchange.right else f'WRONG, drawn "{exchange.expected}"'
        lines.append(f"  POST {exchange.route:<21} {exchange.asked}")
        lines.append(f'       -> "{exchange.answer}" ({verdict}, {exchange.seconds:.2f} s)')
    lines.append(f'  POST /search               {{"text": "{SEARCH_QUERY}", "k": {SEARCH_K}}}')
    for rank, hit in enumerate(online.hits, 1):
        lines.append(f"    {rank}. {_name(hit.path):<15} score {hit.score:.3f}  drawn: {hit.drawn}")
    lines.append(f"  search top-{SEARCH_K}: {online.search_right} of {len(online.hits)} are "
                 f"{SEARCH_QUERY.removeprefix('a ')}s (the set holds {online.matches_in_set})")
    return lines


def format_report(drawn: DrawnSet, out: Path, offline: OfflineResult, online: OnlineResult,
                  shutdown: Shutdown, wall_seconds: float) -> str:
    minutes, seconds = divmod(round(wall_seconds), 60)
    if not shutdown.checked:
        left = "Serve and Ray shut down (processes not checked: no /proc here)."
    elif shutdown.left:
        left = (f"Serve and Ray shut down, but {len(shutdown.left)} Ray processes are still "
                f"running: pids {', '.join(map(str, sorted(shutdown.left)))}")
    else:
        left = (f"Serve and Ray shut down: {shutdown.ray_processes} Ray processes stopped, no Ray "
                "processes left.")
    results = checks(drawn, offline, online, shutdown)
    failed = [name for name, passed in results if not passed]
    lines = [
        "",
        "=" * 78,
        f"raysight demo: {len(drawn.images)} shape images and {len(drawn.broken)} broken files, "
        "built-in models",
        "=" * 78,
        *offline_section(offline, out),
        "",
        *failures_section(offline),
        "",
        *online_section(online),
        "",
        f"Outputs in {out}/",
        "  images/      the drawn PNGs and labels.csv (the truth the answers are checked against)",
        "  captions/ embeddings/ classes/   Parquet part files, one row per input file",
        "  index/       the FAISS index /search served",
        f"Wall time {minutes}m{seconds:02d}s. {left}",
        "Checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)),
    ]
    return "\n".join(lines)
