"""``python -m bench.gpu_check [--device cuda|cpu] [--tiny] [--out FILE] [--models DIR]``"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# As in `python -m bench`: idle OpenMP threads sleep, Ray's workers run at the driver's
# priority, no hub is reached.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    from bench.gpu_check.report import format_report
    from bench.gpu_check.runner import run
    from bench.gpu_check.settings import FULL, TINY

    import bench.gpu_check

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description=bench.gpu_check.__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="'cuda' (default), 'cuda:N' or 'cpu'")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models and short windows: the CI smoke (CPU, ~1 min)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON to write (default bench/results/gpu_check.json, "
                        "bench/results/gpu_check_tiny.json with --tiny)")
    parser.add_argument("--models", type=Path, default=None,
                        help="where to build the models (default: a temporary folder, removed "
                        "at the end; the full check's models take ~7.5 GB)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here "
                         "(use --device cpu --tiny for the CPU smoke)")
    out = args.out or DEFAULT_OUT.with_name("gpu_check_tiny.json" if args.tiny else DEFAULT_OUT.name)
    began = time.perf_counter()
    payload = run(TINY if args.tiny else FULL, args.device, out, args.models)
    print()
    print(format_report(payload))
    print(f"\nwrote {out}; {'PASSED' if payload['passed'] else 'FAILED'} in "
          f"{time.perf_counter() - began:.0f} s")
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
