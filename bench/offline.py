"""Offline: the embed job (batch_jobs, Ray Data) against a plain single-process loop over
the same folder of JPEGs, both writing Parquet.

The plain loop is what one writes by hand: read and decode each file, run the processor,
one forward per `batch` images at the sweep's best batch size, write Parquet at the end.
The job's figure is end to end: planning, starting its actors, loading the model, writing.
Each side runs the batch size that is best for how it uses the cores: the loop the sweep's
(one forward on every core), the job what its own `max_batch_size: auto` picks on one model
actor's threads (one single-threaded forward per core), both chosen before the timing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.bounds import cpu_split
from bench.models import cache_root
from bench.report import median_row, row
from bench.settings import BenchSettings

SCENARIO = "offline_embed"


def jpeg_folder(count: int) -> Path:
    """A folder of `count` distinct 256x256 JPEGs, made once and cached."""
    from bench.payloads import jpeg_images

    folder = cache_root() / f"jpegs-{count}"
    if len(list(folder.glob("*.jpg"))) != count:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for start in range(0, count, 500):
            for index, image in enumerate(jpeg_images(min(500, count - start), 256, seed=start)):
                (folder / f"{start + index:06d}.jpg").write_bytes(image)
    return folder


class PlainLoop:
    """The hand-written loop over a folder of JPEGs, its model loaded once (not timed)."""

    def __init__(self, model_folder: str, images: Path, batch: int, device: str = "cpu",
                 dtype: str = "float32"):
        import torch
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_folder)
        self.dtype = getattr(torch, dtype)
        self.device = device
        self.model = AutoModel.from_pretrained(model_folder, dtype=self.dtype).to(device).eval()
        self.paths = sorted(str(path) for path in images.glob("*.jpg"))
        self.batch = batch

    def run(self, output: Path, segments: int, segment_s: float) -> list[float]:
        """Images per second, from the first image on, in `segments` consecutive stretches
        of about `segment_s` each (stopping early if the images run out): its repeats. The
        Parquet write of what it embedded counts in the last stretch."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch
        from PIL import Image

        done: list[str] = []
        vectors: list[list[float]] = []
        rates: list[float] = []
        for segment in range(segments):
            count, started = 0, time.perf_counter()
            while len(done) < len(self.paths) and time.perf_counter() - started < segment_s:
                chunk = self.paths[len(done):len(done) + self.batch]
                pixels = self.processor.image_processor(
                    images=[Image.open(path).convert("RGB") for path in chunk],
                    return_tensors="pt")["pixel_values"]
                with torch.inference_mode():
                    features = self.model.get_image_features(
                        pixel_values=pixels.to(self.device, dtype=self.dtype))
                features = getattr(features, "pooler_output", features).float()
                vectors.extend(torch.nn.functional.normalize(features, dim=-1).cpu().tolist())
                done.extend(chunk)
                count += len(chunk)
            if segment == segments - 1:
                output.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"path": done,
                                         "embedding": pa.array(vectors, pa.list_(pa.float32()))}),
                               output / "embeddings.parquet")
            if count:
                rates.append(count / (time.perf_counter() - started))
        return rates


def embed_job(model_folder: str, images: Path, output: Path, batch: int,
              torch_threads: int | None, actors: int | None = None,
              **spec_options) -> tuple[float, dict]:
    """Images per second of `run_embed` end to end (plan, actors, model load, write);
    `actors`: the model pool's size (None: the job's default); `spec_options`: other
    ModelSpec fields (the GPU check's device and dtype)."""
    from batch_jobs.embed import run_embed
    from raysight.spec import ModelSpec

    spec = ModelSpec(model=model_folder, max_batch_size=batch, **spec_options)
    started = time.perf_counter()
    summary = run_embed(spec, str(images), str(output), batch_size=batch,
                        torch_threads=torch_threads, actor_pool_size=actors, overwrite=True,
                        progress=False)
    seconds = time.perf_counter() - started
    if summary.rows != len(list(images.glob("*.jpg"))) or summary.failures:
        raise RuntimeError(f"the embed job did not embed every image: {summary.format()}")
    return summary.rows / seconds, {"plan": summary.plan, "job_seconds": summary.seconds}


def job_batch_size(model_folder: str, images: Path, output: Path, torch_threads: int,
                   actors: int) -> dict:
    """The size the embed job's `max_batch_size: auto` picks for this model on one model
    actor (its device and torch threads), the way a job resolves it: a remote sweep, cached
    per model and device for the next run (`choice["from_cache"]`)."""
    from batch_jobs.config import job_config_for
    from batch_jobs.pipeline import current_plan, resolve_batch_sizes
    from raysight.spec import ModelSpec

    job = job_config_for("embed", ModelSpec(model=model_folder, max_batch_size="auto"),
                         str(images), str(output), torch_threads=torch_threads,
                         actor_pool_size=actors)
    _, choice = resolve_batch_sizes(job, current_plan(job))
    return choice


def offline_embed(model_folder: str, batch: int, actors: int, torch_threads: int,
                  settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    """The job over every image (`offline_repeats` passes; a pass over 4,000 images takes
    minutes) and the plain loop over a time-bounded prefix of them, in `repeats` stretches
    (its rate does not depend on how many images it is given): all but one before the job,
    the last one after it."""
    images = jpeg_folder(settings.offline_images)
    job_figures: list[float] = []
    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as scratch:
        # The loop's stretches bracket the job (before and after it), so a machine that is
        # slower or faster for a while falls on both sides of the ratio.
        plain = PlainLoop(model_folder, images, batch)

        def loop(segments: int, name: str) -> list[float]:
            rates = plain.run(Path(scratch) / name, segments, settings.offline_loop_segment_s)
            log("  plain loop: " + ", ".join(f"{rate:.1f}" for rate in rates) + " images/s")
            return rates

        loop_figures = loop(max(1, settings.repeats - 1), "loop-before")
        choice = job_batch_size(model_folder, images, Path(scratch) / "pick", torch_threads,
                                actors)
        log(f"  embed job: max_batch_size auto -> {choice['size']} on {choice['device']}"
            f"{' (cached)' if choice['from_cache'] else ''}")
        split: list[dict] = []
        for repeat in range(settings.offline_repeats):
            # Where the cores go during the job (bench/bounds.py), for its first pass.
            split_now, (figure, details) = cpu_split(
                lambda: embed_job(model_folder, images, Path(scratch) / f"job-{repeat}",
                                  choice["size"], torch_threads, actors),
                scenario="offline_cpu_split")
            split = split or split_now
            job_figures.append(figure)
            log(f"  embed job: {figure:.1f} images/s ({details['plan']})")
        # The job's actors go on using the cores for a few seconds after it returns
        # (measured: ~1.1 cores in the first second, 0.3 in the next): the loop's last
        # stretch waits until they are done, so it is not timed beside them.
        quiet_s = wait_until_quiet(timeout_s=min(30.0, 4 * settings.offline_loop_segment_s))
        log(f"  (the machine was quiet {quiet_s:.1f} s after the job)")
        loop_figures += loop(1, "loop-after")
    return [
        median_row(SCENARIO, "embed_job", "images_per_s", job_figures, unit="img/s",
                   images=settings.offline_images, model_actors=actors,
                   torch_threads=torch_threads, **details, batch=choice["size"],
                   batch_picked_on=choice["device"], batch_pick_cached=choice["from_cache"]),
        median_row(SCENARIO, "plain_loop", "images_per_s", loop_figures, unit="img/s",
                   stretch_s=settings.offline_loop_segment_s, batch=batch),
        row(SCENARIO, "embed_job", "ratio_to_loop",
            round(statistics.median(job_figures) / statistics.median(loop_figures), 3)),
    ] + split


def wait_until_quiet(busy_cores: float = 0.3, timeout_s: float = 30.0) -> float:
    """Wait until this machine's CPUs were busy for less than `busy_cores` cores over a
    second (all processes, /proc/stat), at most `timeout_s`; the seconds waited."""
    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            # user nice system idle iowait irq softirq steal
            ticks = [int(value) for value in stat.readline().split()[1:9]]
        return sum(ticks[0:3]) + ticks[5] + ticks[6], sum(ticks)

    cores = os.cpu_count() or 1
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        busy, total = busy_and_total()
        time.sleep(1.0)
        busy_after, total_after = busy_and_total()
        if cores * (busy_after - busy) / max(1, total_after - total) < busy_cores:
            break
    return time.perf_counter() - began
