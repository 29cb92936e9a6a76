"""Runs the demo's steps in order on one private local Ray, and always shuts it down."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from raysight.errors import ConfigError, RaysightError

# Written into the output folder, so a re-run may replace what an earlier run left there
# and never a folder the user keeps other things in.
MARKER = ".raysight-demo"
STEPS = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysight demo",
        description="Caption, embed, classify, index and serve a drawn image set with the "
        "built-in models on a private local Ray, and report how right the answers are.",
    )
    parser.add_argument("--images", type=int, default=2000, help="shape images to draw")
    parser.add_argument("--out", default="raysight-demo",
                        help="folder for the images and every output (default ./raysight-demo)")
    parser.add_argument("--port", type=int, help="HTTP port of the Serve app (default: a free one)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the drawing")
    return parser


def prepare_output(out: Path) -> None:
    """Create `out`, or reuse it if an earlier demo made it; refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out} exists and was not made by `raysight demo`; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `raysight demo`; a re-run replaces what is here\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text}", flush=True)


def start_ray(temp_dir: str) -> None:
    """A private local Ray: never a cluster another process started, and never left running."""
    from raysight.local_ray import start_local_ray

    # Serve reserves one CPU per model replica; two models need two even on a smaller machine.
    start_local_ray(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False,
                    log_to_driver=False, logging_level=logging.WARNING, _temp_dir=temp_dir)
    quiet_ray_logs()


def quiet_ray_logs() -> None:
    """Keep Ray's progress chatter out of the report; everything stays in the session's logs.

    Ray Data sets up its own console handler when imported, so import it first."""
    import ray.data  # noqa: F401
    from ray import serve  # noqa: F401

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":  # the file log keeps every level
            handler.setLevel(logging.ERROR)
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def stop_ray():
    """Shut Serve and Ray down; return (Ray processes there were, pids still running)."""
    import ray
    from ray import serve

    from raysight.cli.demo.processes import descendants, wait_until_gone

    from raysight.local_ray import current_local_ray

    started = descendants()
    if ray.is_initialized():
        serve.shutdown()
    local = current_local_ray()
    if local is not None:
        local.stop()
    elif ray.is_initialized():
        ray.shutdown()
    return started, wait_until_gone(started, timeout_s=30)


def run(args: argparse.Namespace) -> int:
    from raysight.cli.demo.offline import BROKEN_FILES, draw_images, run_jobs
    from raysight.cli.demo.online import serve_and_ask
    from raysight.cli.demo.report import Shutdown, checks, format_report

    if args.images < 1:
        raise ConfigError("--images must be at least 1")
    began = time.perf_counter()
    out = Path(args.out).resolve()
    prepare_output(out)
    step(1, f"drawing {args.images} shape images and {BROKEN_FILES} broken files into "
         f"{out / 'images'}")
    # An earlier, larger run's images would otherwise join this run's.
    shutil.rmtree(out / "images", ignore_errors=True)
    drawn = draw_images(out / "images", args.images, args.seed)
    # A short path: Ray's unix sockets live under it, and their paths are length-limited.
    temp_dir = tempfile.mkdtemp(prefix="rsdemo-", dir="/tmp" if os.path.isdir("/tmp") else None)
    ok = False
    try:
        step(2, "starting a private local Ray; running the caption, embed, index and classify "
             "jobs on Ray Data")
        start_ray(temp_dir)
        offline = run_jobs(drawn, out)
        step(3, "serving shapes-vlm, shapes-clip and the index on Ray Serve; sending HTTP "
             "requests")
        online = serve_and_ask(drawn, out / "index", args.port or free_port())
        ok = True
    finally:
        step(4, "shutting Serve and Ray down")
        started, left = stop_ray()
        if ok:
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:
            print(f"raysight demo: Ray's logs are in {temp_dir}", file=sys.stderr)
    shutdown = Shutdown(len(started), frozenset(left), checked=os.path.isdir("/proc"))
    print(format_report(drawn, out, offline, online, shutdown, time.perf_counter() - began))
    return 0 if all(passed for _, passed in checks(drawn, offline, online, shutdown)) else 1


def main(argv: list[str]) -> int:
    """`raysight demo ...`; returns the exit code (0 when every check passed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the built-in models are local files
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RaysightError as exc:
        print(f"raysight demo: error: {exc.message}", file=sys.stderr)
        return 2
