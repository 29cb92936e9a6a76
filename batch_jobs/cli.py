"""Command lines of the jobs: flags build a ModelSpec and a JobConfig, then one call runs it.

    python -m batch_jobs.caption  --model builtin:shapes-vlm  --input IMAGES --output OUT
    python -m batch_jobs.embed    --model builtin:shapes-clip --input IMAGES --output OUT
    python -m batch_jobs.classify --model builtin:shapes-clip --input IMAGES --output OUT --labels "a,b"
    python -m batch_jobs.index    --input EMBED_OUT --output INDEX_DIR   (or --model M --input IMAGES)

`main(job, argv)` is what each `python -m batch_jobs.<job>` and `raysight job <job>` call.
"""

from __future__ import annotations

import argparse
import sys

from raysight.errors import RaysightError

from batch_jobs.config import JobConfig

_DESCRIPTIONS = {
    "caption": "Caption images, or ask each one a question (--prompt, or a prompt column).",
    "embed": "Embed images (and texts from a table's text column) into vectors.",
    "classify": "Zero-shot classify images over a list of labels.",
}


def add_job_arguments(parser: argparse.ArgumentParser, job: str) -> None:
    """The flags of a caption / embed / classify job (the index job reuses the embed ones)."""
    from raysight.spec_arguments import add_spec_arguments

    add_spec_arguments(parser)
    parser.add_argument("--input", required=True,
                        help="folder or glob of images, or a Parquet/CSV/JSONL file or folder")
    parser.add_argument("--output", required=True,
                        help="output folder for the Parquet part files (re-run to resume)")
    parser.add_argument("--input-format", choices=["auto", "images", "parquet", "csv", "json"],
                        default="auto")
    parser.add_argument("--image-column", default="image", help="table inputs: image column")
    parser.add_argument("--id-column", help="table inputs: id column (default: 'id' or the path)")
    parser.add_argument("--image-root", help="table inputs: folder relative image paths are under")
    if job == "caption":
        parser.add_argument("--prompt", help="question asked of every image (default: caption)")
        parser.add_argument("--prompt-column", default="prompt",
                            help="table inputs: per-row prompt column (ask / VQA)")
        parser.add_argument("--max-new-tokens", type=int)
    if job in ("embed", "index"):
        parser.add_argument("--text-column", default="text",
                            help="table inputs: rows without an image embed this text")
    if job == "classify":
        parser.add_argument("--labels", help="comma-separated labels, e.g. 'a red circle,a cat'")
        parser.add_argument("--labels-file", help="a file with one label per line")
    parser.add_argument("--allow-urls", action="store_true",
                        help="fetch http(s) image URLs found in a table (images.allow_urls)")
    runtime = parser.add_argument_group("how it runs on Ray")
    runtime.add_argument("--batch-size", type=int, help="rows per model-stage call")
    runtime.add_argument("--preprocess-batch-size", type=int, help="rows per CPU-stage call")
    runtime.add_argument("--actor-pool-size", type=int, help="model actors (default: from the cluster)")
    runtime.add_argument("--preprocess-max-actors", type=int, help="most CPU-stage actors")
    runtime.add_argument("--num-gpus", type=float, help="GPUs per model actor")
    runtime.add_argument("--model-num-cpus", type=float, help="CPUs each model actor reserves")
    runtime.add_argument("--torch-threads", type=int, help="torch threads per model actor")
    runtime.add_argument("--rows-per-file", type=int, help="rows per output part file")
    runtime.add_argument("--overwrite", action="store_true",
                         help="replace what the output folder holds instead of resuming")
    runtime.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    runtime.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS / auto)")


def job_config_from_arguments(job: str, args: argparse.Namespace) -> JobConfig:
    """One JobConfig from parsed flags; unset flags keep the JobConfig defaults."""
    from raysight.spec_arguments import spec_from_arguments

    from batch_jobs.config import make_job_config

    spec = spec_from_arguments(args, args.model, args.config)
    if args.allow_urls:
        spec = spec.model_copy(update={"images": spec.images.model_copy(update={"allow_urls": True})})
    names = (
        "output", "input_format", "image_column", "id_column", "image_root", "prompt",
        "prompt_column", "max_new_tokens", "text_column", "batch_size", "preprocess_batch_size",
        "actor_pool_size", "preprocess_max_actors", "num_gpus", "model_num_cpus",
        "torch_threads", "rows_per_file", "ray_address",
    )
    fields = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if job == "classify":
        fields["labels"] = tuple(_labels(args))
    return make_job_config(
        job=job, spec=spec, input=args.input, overwrite=args.overwrite,
        progress=not args.no_progress, **fields,
    )


def _labels(args: argparse.Namespace) -> list[str]:
    labels: list[str] = []
    if args.labels:
        labels += [label.strip() for label in args.labels.split(",") if label.strip()]
    if args.labels_file:
        try:
            with open(args.labels_file, encoding="utf-8") as handle:
                labels += [line.strip() for line in handle if line.strip()]
        except OSError as exc:
            raise RaysightError(f"cannot read --labels-file {args.labels_file}: {exc.strerror}") from None
    return labels


def main(job: str, argv: list[str] | None = None) -> int:
    """Run `job` ('caption', 'embed', 'classify' or 'index') with command-line `argv`."""
    if job == "index":
        from batch_jobs.index import index_main

        return index_main(argv)
    parser = argparse.ArgumentParser(prog=f"python -m batch_jobs.{job}", description=_DESCRIPTIONS[job])
    add_job_arguments(parser, job)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    try:
        from batch_jobs.pipeline import run_job

        summary = run_job(job_config_from_arguments(job, args))
    except RaysightError as exc:
        print(f"{job}: error: {exc.message}", file=sys.stderr)
        return 2
    print(summary.to_json() if args.json else summary.format())
    return 0
