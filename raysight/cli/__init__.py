"""The `raysight` command. Each subcommand builds a ModelSpec and calls a library function.

    raysight ask   --model builtin:shapes-vlm --image X.png --prompt "What color is the shape?"
    raysight embed --model builtin:shapes-clip (--image X.png | --text "a red circle")
    raysight serve --model builtin:shapes-vlm --model builtin:shapes-clip [--port 8000]
    raysight job caption|embed|classify|index ...   (same flags as python -m batch_jobs.JOB)
    raysight demo  (the end-to-end tour on the built-in models)

This package is the command-line face: it imports both apps (serve_app, batch_jobs) and the
core; neither app imports it. `python -m raysight.cli ...` runs the same command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raysight.errors import RaysightError
from raysight.spec_arguments import add_spec_arguments, spec_from_arguments


def _read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RaysightError(f"cannot read image {path}: {exc.strerror}") from None


def run_ask(args: argparse.Namespace) -> int:
    from raysight.engines import build_engine
    from raysight.engines.generate import GenerateRequest

    spec = spec_from_arguments(args, args.model, args.config)
    engine = build_engine(spec)
    if engine.task != "generate":
        raise RaysightError(f"{spec.model} is an embedding model; `ask` needs a generative one")
    image = _read_image(args.image) if args.image else None
    request = GenerateRequest.from_prompt(args.prompt, image, max_new_tokens=args.max_new_tokens)
    result = engine.run([request])[0]
    if isinstance(result, RaysightError):
        raise result
    print(result.text)
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest

    spec = spec_from_arguments(args, args.model, args.config)
    engine = build_engine(spec)
    if engine.task != "embed":
        raise RaysightError(f"{spec.model} is a generative model; `embed` needs a dual encoder")
    if bool(args.image) == bool(args.text):
        raise RaysightError("give exactly one of --image PATH or --text TEXT")
    request = EmbedRequest(image=_read_image(args.image)) if args.image else EmbedRequest(text=args.text)
    result = engine.run([request])[0]
    if isinstance(result, RaysightError):
        raise result
    head = ", ".join(f"{value:.4f}" for value in result.vector[:8])
    print(f"dim={len(result.vector)} first values: [{head}, ...]")
    return 0


def run_serve(argv: list[str]) -> int:
    from serve_app.launch import serve_command

    return serve_command(argv)


def run_job(argv: list[str]) -> int:
    from batch_jobs.cli import main as job_main
    from batch_jobs.jobs import JOBS

    if not argv or argv[0] not in JOBS:
        print(f"usage: raysight job {{{','.join(JOBS)}}} [flags of that job; --help lists them]",
              file=sys.stderr)
        return 2
    return job_main(argv[0], argv[1:])


def run_demo(argv: list[str]) -> int:
    from raysight.cli.demo import main as demo_main

    return demo_main(argv)


# Subcommands that own their flags: the rest of the command line goes to them untouched.
PASS_THROUGH = {"serve": run_serve, "job": run_job, "demo": run_demo}


def build_parser() -> argparse.ArgumentParser:
    from batch_jobs.jobs import JOBS

    parser = argparse.ArgumentParser(prog="raysight", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a prompt about an image")
    add_spec_arguments(ask)
    ask.add_argument("--image", help="path of the image")
    ask.add_argument("--prompt", default=None, help="the question; leave out to caption")
    ask.add_argument("--max-new-tokens", type=int, default=None)
    ask.set_defaults(handler=run_ask)

    embed = commands.add_parser("embed", help="embed an image or a text")
    add_spec_arguments(embed)
    embed.add_argument("--image")
    embed.add_argument("--text")
    embed.set_defaults(handler=run_embed)

    for name, text in (
        ("serve", "serve models over HTTP on Ray Serve (see `raysight serve --help`)"),
        ("job", f"run an offline job: {', '.join(JOBS)}"),
        ("demo", "run the end-to-end tour on the built-in models"),
    ):
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in PASS_THROUGH:
            return PASS_THROUGH[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except RaysightError as exc:
        print(f"raysight: error: {exc.message}", file=sys.stderr)
        return 2

