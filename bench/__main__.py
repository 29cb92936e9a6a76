"""``python -m bench [--quick] [--only SCENARIO ...] [--out DIR]``"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch is imported anywhere: idle OpenMP threads sleep (as in raysight's replicas)
# instead of spinning on the cores the servers under test need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray starts its workers at nice 15. On a machine shared with anything at nice 0, the Serve
# replicas and the job's actors would then get a few % of a contended core while the Flask
# baseline, the plain loop and the in-process ceiling (all nice 0) get the rest: compare
# like with like. Read by the raylet when this process starts Ray.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    from bench.runner import DEFAULT_SCENARIOS, SCENARIOS, RunOptions, run
    from bench.settings import FULL, QUICK

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and short windows: a smoke test (~1 min)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="SCENARIO",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}; "
                        f"default: all but caching, serve_batch and reliability")
    parser.add_argument("--out", type=Path,
                        help="results folder (default: bench/results, bench/results/quick "
                        "with --quick)")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    scenarios = tuple(args.only) if args.only else DEFAULT_SCENARIOS
    run(RunOptions(settings=QUICK if args.quick else FULL, scenarios=scenarios, out=out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
