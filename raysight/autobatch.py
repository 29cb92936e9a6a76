"""`max_batch_size: auto`: a short sweep on the device picks the batch size, once per model
and device.

The sweep runs the engine's own `infer` + `postprocess` on made-up images (noise, each one
different, so no cache answers) at batch sizes 1, 2, 4, ... up to `auto_batch.max_size`,
within `auto_batch.budget_s`. Past some size a bigger batch buys no throughput (the device is
busy) and only adds latency, so the pick is the smallest size whose median throughput is
within `auto_batch.tolerance` of the best; which sizes get the budget's repeated samples is
raysight/autobatch_plan.py's method. A size that runs out of memory ends the climb. The pick
is kept in a small JSON file keyed by the model (source and a fingerprint of its files), the
device, dtype and task, so the next start on the same device reads it instead of sweeping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysight.autobatch_plan import SweepPlan, pick_size  # noqa: F401 - pick_size: the rule
from raysight.errors import RaysightError

logger = logging.getLogger(__name__)

_SWEEP_IMAGE_SIDE = 256
_SWEEP_NEW_TOKENS = 8


@dataclass(frozen=True)
class BatchChoice:
    """What `auto` picked, and from what: the median items/s per swept size and how many
    samples each median is of (both empty from the cache)."""

    size: int
    from_cache: bool
    device: str
    throughput: dict[int, float] = field(default_factory=dict)
    samples: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str = ""  # why the sweep stopped before max_size ("" when it reached it)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["throughput"] = {str(size): rate for size, rate in self.throughput.items()}
        data["samples"] = {str(size): count for size, count in self.samples.items()}
        return data

    def describe(self) -> str:
        if self.from_cache:
            return f"max_batch_size auto -> {self.size} (cached for {self.device})"
        rates = ", ".join(f"{size}: {rate:.1f}" + (f" x{self.samples[size]}"
                                                   if self.samples.get(size, 1) > 1 else "")
                          for size, rate in self.throughput.items())
        return (f"max_batch_size auto -> {self.size} on {self.device} after a "
                f"{self.seconds:.1f} s sweep (median items/s by batch, x samples: {rates})")


def sweep_sizes(max_size: int) -> list[int]:
    """1, 2, 4, ... below max_size, then max_size itself."""
    sizes, size = [], 1
    while size < max_size:
        sizes.append(size)
        size *= 2
    return sizes + [max_size]


# -- the cache ---------------------------------------------------------------------------
def default_cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "raysight" / "batch_sizes.json"


def device_name(device: str) -> str:
    """The device as the pick depends on it: the GPU's name, or the CPU's model and the
    torch threads this process runs with."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"{device}:{torch.cuda.get_device_name(index)}"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu:{model or 'unknown'}:{torch.get_num_threads()} threads"


def model_fingerprint(source: str, revision: str | None) -> str:
    """Changes when a local model's files change (names, sizes, modification times); a hub
    id is fingerprinted by its name and revision."""
    folder = Path(source)
    parts = [source, revision or ""]
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                parts.append(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_key(spec, source: str, task: str, device: str, dtype) -> str:
    settings = spec.auto_batch
    return json.dumps({
        "model": source,
        "files": model_fingerprint(source, spec.revision),
        "task": task,
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "max_size": settings.max_size,
        "tolerance": settings.tolerance,
    }, sort_keys=True)


def _cache_path(spec) -> Path:
    return Path(spec.auto_batch.cache_file) if spec.auto_batch.cache_file else default_cache_file()


def read_cached(spec, key: str) -> dict | None:
    try:
        entries = json.loads(_cache_path(spec).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = entries.get(key) if isinstance(entries, dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("size"), int) else None


def write_cached(spec, key: str, choice: BatchChoice) -> None:
    """Add the pick to the cache file (a replace, so a reader never sees half a file)."""
    path = _cache_path(spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        entries = entries if isinstance(entries, dict) else {}
        entries[key] = {"size": choice.size, "throughput": choice.as_dict()["throughput"],
                        "device": choice.device, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime())}
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(scratch, path)
    except OSError as exc:  # a read-only home: the next start sweeps again
        logger.warning("could not keep the batch size pick in %s: %s", path, exc)


# -- the sweep ---------------------------------------------------------------------------
def resolve_batch_size(engine) -> BatchChoice | None:
    """Resolve `max_batch_size: auto` for a loaded engine, in place: its spec gets the pick.
    None when the spec names a size."""
    spec = engine.spec
    if spec.max_batch_size != "auto":
        return None
    key = cache_key(spec, _source(spec), engine.task, engine.device, engine.dtype)
    choice = _from_cache(spec, key, engine.device)
    if choice is None:
        choice = sweep(engine)
        write_cached(spec, key, choice)
    engine.spec = spec.model_copy(update={"max_batch_size": choice.size})
    engine.loaded = dataclasses.replace(engine.loaded, spec=engine.spec)
    engine.batch_choice = choice
    logger.info("%s: %s", spec.model, choice.describe())
    return choice


def cached_choice(spec) -> BatchChoice | None:
    """The pick the cache holds for `spec` on the device and torch threads this process would
    load it with, found without loading the model or importing transformers: a job's look-up
    before its pipeline starts then costs no model load. None when `spec` names a size or
    nothing is cached."""
    from typing import get_args

    from raysight.loading import resolve_device, resolve_dtype
    from raysight.spec import Task

    if spec.max_batch_size != "auto":
        return None
    source = _source(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    # The task is the model family's (from the model's config, which needs transformers);
    # a model has one, so an entry under any task is this model's.
    for task in [spec.task] if spec.task else get_args(Task):
        choice = _from_cache(spec, cache_key(spec, source, task, device, dtype), device)
        if choice is not None:
            return choice
    return None


def _from_cache(spec, key: str, device: str) -> BatchChoice | None:
    cached = read_cached(spec, key)
    if cached is None:
        return None
    return BatchChoice(size=min(cached["size"], spec.auto_batch.max_size), from_cache=True,
                       device=device_name(device))


def _source(spec) -> str:
    from raysight.loading import resolve_source

    return resolve_source(spec)


def sweep(engine) -> BatchChoice:
    """Items/s of the engine at the sizes worth timing within the budget, and the pick
    (the method: raysight/autobatch_plan.py)."""
    settings = engine.spec.auto_batch
    sizes = sweep_sizes(settings.max_size)
    plan = SweepPlan(sizes=sizes, tolerance=settings.tolerance, budget_s=settings.budget_s)
    prepared = _sample_items(engine, settings.max_size)
    original, features = engine.spec, getattr(engine, "image_features", None)
    if features is not None:
        engine.image_features = None  # the vision cache would answer every repeat
    # One sample lasts at least this long (a fast device runs its batch several times).
    sample_s = settings.budget_s / (8 * len(sizes))
    # A new batch shape on a GPU picks its kernels on the first call; on a CPU the first call
    # at a size costs what the next does, and the budget is better spent on more samples.
    warm_up = str(engine.device).startswith("cuda")
    started = time.perf_counter()
    try:
        # The first forward of a process pays for lazy set-up (allocators, kernels), not
        # for its size: it is not timed, nor counted against the budget.
        engine.spec = original.model_copy(update={"max_batch_size": 1})
        _run_batch(engine, prepared[:1])
        started = time.perf_counter()
        while (size := plan.next_size(time.perf_counter() - started, int(warm_up))) is not None:
            engine.spec = original.model_copy(update={"max_batch_size": size})
            try:
                plan.record(size, _rate(engine, prepared[:size], sample_s,
                                        warm_up and size not in plan.samples))
            except _OutOfMemory as exc:
                plan.stopped = f"batch {size} ran out of memory ({exc})"
                plan.sizes = [s for s in plan.sizes if s < size]
                if not plan.samples:
                    break
    finally:
        engine.spec = original
        if features is not None:
            engine.image_features = features
    if not plan.samples:
        raise RaysightError(f"max_batch_size auto: the sweep could not run one batch: "
                            f"{plan.stopped}")
    size = plan.pick()
    if plan.stopped.startswith("budget") and plan.still_growing():
        # Still growing when the budget ran out: a bigger size may well be faster.
        logger.warning("max_batch_size auto: the %g s budget ran out at batch %d while the "
                       "throughput still grew; raise auto_batch.budget_s or set "
                       "max_batch_size for this device", settings.budget_s, size)
    return BatchChoice(size=size, from_cache=False, device=device_name(engine.device),
                       throughput={s: round(r, 2) for s, r in plan.rates().items()},
                       samples={s: len(v) for s, v in sorted(plan.samples.items())},
                       seconds=round(time.perf_counter() - started, 2), stopped=plan.stopped)


class _OutOfMemory(Exception):
    pass


def _rate(engine, items: list, window_s: float, warm_up: bool) -> float:
    """Items/s of one batch of `items` run again and again for `window_s` (at least once),
    after a warm-up call when `warm_up`."""
    if warm_up:
        _run_batch(engine, items)
    count, started = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - started < window_s:
        _run_batch(engine, items)
        count += len(items)
    return count / (time.perf_counter() - started)


def _run_batch(engine, items: list) -> None:
    """One infer + postprocess; out of memory is raised as such (the engine's own
    per-item isolation would hide it), any item error fails the sweep."""
    import torch

    try:
        outputs = engine.infer(items)
    except torch.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise _OutOfMemory(str(exc).splitlines()[0]) from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc):
            raise
        raise _OutOfMemory(str(exc).splitlines()[0]) from None
    for output in outputs:
        if isinstance(output, RaysightError):
            raise RaysightError(f"max_batch_size auto: a sweep item failed: {output.message}")
        engine.postprocess(output)


def _sample_items(engine, count: int) -> list:
    """`count` prepared items of distinct noise images, as the engine's task takes them."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    items = []
    for _ in range(count):
        pixels = generator.integers(0, 256, (_SWEEP_IMAGE_SIDE, _SWEEP_IMAGE_SIDE, 3), np.uint8)
        request = _sample_request(engine, Image.fromarray(pixels))
        items.append(_uncached(engine.preprocess(request)))
    return items


def _uncached(item):
    """The item without the keys a cache would answer it by: the sweep runs each batch
    several times and must time the model, not a cache."""
    changes = {name: None for name in ("image_key", "response_key") if hasattr(item, name)}
    inputs = getattr(item, "inputs", None)
    if inputs is not None and getattr(inputs, "image_keys", ()):
        changes["inputs"] = dataclasses.replace(inputs, image_keys=())
    return dataclasses.replace(item, **changes) if changes else item


def _sample_request(engine, image):
    if engine.task == "embed":
        from raysight.engines.embed import EmbedRequest

        return EmbedRequest(image=image)
    from raysight.engines.generate import GenerateRequest

    # Every row generates the same number of tokens, so sizes compare like with like.
    return GenerateRequest.from_prompt("Describe the image.", image,
                                       max_new_tokens=_SWEEP_NEW_TOKENS,
                                       min_new_tokens=_SWEEP_NEW_TOKENS)
