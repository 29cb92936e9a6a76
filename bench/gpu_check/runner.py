"""The GPU check's steps in order, each timed and kept in the JSON even when a later one
fails: build the models, batched == single per architecture and dtype, the vision cache on
the device, the engine's ceiling, `raysight serve`, the offline job."""

from __future__ import annotations

import json
import platform
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.gpu_check.settings import CheckSettings

PROMPTS = ["Describe the image.", "What shape is this? Answer with one word.", "hi",
           "What color is the shape?", "Tell me a long story about this photo of a cat",
           "Count the objects.", "Is it day or night?", "Write a caption for a newspaper."]


def smooth_images(count: int, sides: list[int], seed: int = 0) -> list:
    """`count` PIL images of varied sizes (colour fields, like photos to a JPEG coder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = sides[index % len(sides)], sides[(index * 3 + 1) % len(sides)]
        coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype="uint8"))
        images.append(coarse.resize((width, height), Image.BILINEAR))
    return images


class Check:
    """One run: the steps' timings, the checks' verdicts, the figures, one JSON."""

    def __init__(self, settings: CheckSettings, device: str, out: Path, log: Callable[[str], None]):
        self.settings = settings
        self.device = device
        self.out = out
        self.log = log
        self.payload: dict[str, Any] = {
            "device": device, "tiny": settings.tiny, "machine": machine(device),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": {}, "models": {}, "checks": [], "figures": {}}
        self.started = time.perf_counter()

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        """Run one step, timed; an exception fails the check named after it, not the run."""
        self.log(f"== {name}")
        began = time.perf_counter()
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - record it, go on with the other steps
            self.log(traceback.format_exc())
            self.verdict(name, False, error=f"{type(exc).__name__}: {exc}"[:2000])
            return None
        finally:
            seconds = round(time.perf_counter() - began, 1)
            self.payload["steps"][name] = seconds
            self.log(f"   {name}: {seconds} s")
            self.write()

    def verdict(self, name: str, passed: bool, **detail) -> None:
        self.payload["checks"].append({"name": name, "passed": bool(passed), **detail})
        self.log(f"   {'PASS' if passed else 'FAIL'} {name}")

    @property
    def passed(self) -> bool:
        checks = self.payload["checks"]
        return bool(checks) and all(check["passed"] for check in checks)

    def write(self) -> None:
        self.payload["run_seconds"] = round(time.perf_counter() - self.started, 1)
        self.payload["passed"] = self.passed
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.payload, indent=1, default=str) + "\n")


def machine(device: str) -> dict:
    import os

    import torch
    import transformers

    info = {"cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def run(settings: CheckSettings, device: str, out: Path, models_dir: Path | None,
        log: Callable[[str], None] = print) -> dict:
    """Every step; writes `out` after each; returns the payload (its "passed" decides)."""
    from bench.gpu_check.gpu_busy import utilization_reader

    check = Check(settings, device, out, log)
    reader = utilization_reader() if device.startswith("cuda") else None
    check.payload["gpu_busy_source"] = None if reader is None else "NVML utilisation"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        root = models_dir or Path(scratch) / "models"
        folders = check.step("build_models", lambda: build_models(check, root))
        if folders is None:
            check.write()
            return check.payload
        uncached = check.step("batched_equals_single", lambda: equality(check, folders))
        check.step("vision_cache", lambda: vision_cache(check, folders, uncached or {}))
        try:
            with private_ray():
                for kind in ("embeddings", "generation"):
                    check.step(f"throughput_{kind}",
                               lambda kind=kind: throughput(check, kind, folders, reader))
                check.step("offline_embed", lambda: offline(check, folders, reader, Path(scratch)))
        except Exception as exc:  # noqa: BLE001 - Ray itself did not start (or stop)
            check.verdict("ray", False, error=f"{type(exc).__name__}: {exc}"[:2000])
    check.write()
    return check.payload


def build_models(check: Check, root: Path) -> dict[str, str]:
    """Each architecture at its size, made in bfloat16 on the check's device (float32 for
    the tiny ones), timed one by one."""
    from bench.models import count_params
    from tests.fixtures.random_models import NAMED_SIZES, build_random_model

    folders = {}
    dtype = None if check.settings.tiny else "bfloat16"
    for arch, size_name in check.settings.models.items():
        began = time.perf_counter()
        folder = build_random_model(arch, root / arch, NAMED_SIZES[size_name], dtype=dtype,
                                    device=check.device)
        seconds = round(time.perf_counter() - began, 1)
        counts = count_params(folder)
        check.payload["models"][arch] = {"size": size_name, "build_s": seconds, **counts}
        check.log(f"   {arch} '{size_name}': {counts['params'] / 1e6:.1f}M parameters, "
                  f"built in {seconds} s")
        folders[arch] = str(folder)
    return folders


def _spec(check: Check, folder: str, dtype: str, **fields):
    from raysight.spec import ModelSpec

    return ModelSpec(model=folder, dtype=dtype, device=check.device,
                     max_batch_size=check.settings.equality_rows, **fields)


def _chats(check: Check) -> list:
    from raysight.engines.generate import GenerateRequest

    s = check.settings
    sides = [32, 48, 64, 40] if s.tiny else [224, 280, 336, 392]
    return [GenerateRequest.from_prompt(PROMPTS[i % len(PROMPTS)], image,
                                        max_new_tokens=s.equality_tokens,
                                        min_new_tokens=s.equality_tokens)
            for i, image in enumerate(smooth_images(s.equality_rows, sides, seed=7))]


def equality(check: Check, folders: dict[str, str]) -> dict:
    """Batched == single for every architecture in every dtype; returns the bfloat16
    batched runs (the vision cache check's reference)."""
    from bench.gpu_check.equality import embed_batched_vs_single, batched_vs_single
    from bench.gpu_check.throughput import free_device_memory
    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest

    s = check.settings
    no_caches = {"preprocess_cache_bytes": 0, "vision_cache_bytes": 0}
    references = {}
    for dtype in s.dtypes:
        for arch in s.models:
            began = time.perf_counter()
            engine = build_engine(_spec(check, folders[arch], dtype, **no_caches))
            loaded = round(time.perf_counter() - began, 1)
            if arch == s.embed_arch:
                images = smooth_images(s.equality_rows // 2, [32, 48] if s.tiny else [224, 320])
                texts = [PROMPTS[i] for i in range(s.equality_rows - len(images))]
                report = embed_batched_vs_single(
                    engine, [EmbedRequest(image=i) for i in images]
                    + [EmbedRequest(text=t) for t in texts])
            else:
                report, batched = batched_vs_single(engine, _chats(check))
                if dtype == s.dtypes[0]:
                    references[arch] = batched
            report.update(load_s=loaded, run_s=round(time.perf_counter() - began - loaded, 1))
            check.verdict(f"batched_equals_single/{arch}/{dtype}", report.pop("passed"), **report)
            del engine
            free_device_memory()
    return references


def vision_cache(check: Check, folders: dict[str, str], references: dict) -> None:
    """The vision-feature cache on the device, for each generative architecture whose
    `generate` takes precomputed features, in the first dtype."""
    from bench.gpu_check.cache_check import vision_cache_check
    from bench.gpu_check.throughput import free_device_memory
    from raysight.engines import build_engine

    dtype = check.settings.dtypes[0]
    for arch in check.settings.generative:
        if arch not in references:
            check.verdict(f"vision_cache/{arch}", False, error="no batched run to compare with")
            continue
        engine = build_engine(_spec(check, folders[arch], dtype, preprocess_cache_bytes=0))
        report = vision_cache_check(engine, _chats(check), references[arch])
        check.verdict(f"vision_cache/{arch}/{dtype}", report.pop("passed"), **report)
        del engine
        free_device_memory()


@contextmanager
def private_ray() -> Iterator[None]:
    """A local Ray of this process's own for `raysight serve` and the offline job."""
    import ray

    ray.init(address="local", log_to_driver=False, include_dashboard=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _options(check: Check) -> dict[str, str]:
    """The device and dtype the throughput steps serve in: bfloat16 on a GPU."""
    return {"device": check.device,
            "dtype": "bfloat16" if check.device.startswith("cuda") else "float32"}


def throughput(check: Check, kind: str, folders: dict[str, str], reader) -> None:
    """The engine's ceiling, then `raysight serve` (one replica, one whole GPU), for
    `kind` ("embeddings" or "generation") at every client count."""
    from bench.gpu_check import throughput as measure

    s = check.settings
    arch, path = ((s.embed_arch, "/v1/embeddings") if kind == "embeddings"
                  else (s.generate_arch, "/v1/chat/completions"))
    options = _options(check)
    rows = measure.ceiling(folders[arch], s.clients, s.max_batch_size, s.window_s,
                           s.new_tokens, reader, **options)
    check.payload["figures"][kind] = rows
    # The app is deleted at the end (its replica gives the GPU back); Serve's controller
    # and proxy stay up for the next kind.
    rows += measure.served(folders[arch], arch, path, s.clients, s.max_batch_size,
                           s.window_s, s.new_tokens,
                           1.0 if check.device.startswith("cuda") else 0.0, reader, **options)
    for row in rows:
        check.log(f"   {kind} {row['variant']:8s} {row['clients']:3d} clients: "
                  f"{row['requests_per_s']} req/s, {row['tokens_per_s']} tok/s, "
                  f"GPU busy {row['gpu_busy_pct']}%")
    served = [row for row in rows if row["variant"] == "served"]
    check.verdict(f"served/{kind}", len(served) == len(s.clients)
                  and all(r["requests_per_s"] > 0 for r in served), points=len(served))


def offline(check: Check, folders: dict[str, str], reader, scratch: Path) -> None:
    """The embed job against the plain loop over the same JPEGs, with Serve gone."""
    from ray import serve

    from bench.gpu_check import throughput as measure

    serve.shutdown()
    s = check.settings
    result = measure.offline(folders[s.embed_arch], s.offline_images, s.offline_batch,
                             s.offline_loop_s, scratch, **_options(check), reader=reader)
    check.payload["figures"]["offline_embed"] = result
    check.verdict("offline_embed", result["job_images_per_s"] > 0, images=s.offline_images)
