"""Throughput on the check's device with the bench's own machinery: the engine's ceiling
(bench/inprocess.py), `raysight serve` under closed-loop clients (bench/servers.py,
bench/loadgen.py) and the offline embed job against a plain loop (bench/offline.py), each
with the GPU's busy % over its run (bench/gpu_check/gpu_busy.py)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

from bench.gpu_check.gpu_busy import GpuBusy

Reader = Callable[[], float] | None


def free_device_memory() -> None:
    """Drop what the last engine left in the driver's CUDA cache (no-op on CPU)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def ceiling(folder: str, clients_list: tuple[int, ...], max_batch_size: int, seconds: float,
            max_tokens: int, reader: Reader, **spec_options) -> list[dict]:
    """The engine in this process, batches of min(clients, max_batch_size), images decoded
    from data URLs each time (bench/inprocess.py), per client count."""
    from bench.inprocess import EngineRunner

    runner = EngineRunner(folder, max_batch_size, max_tokens=max_tokens, **spec_options)
    rows = []
    for clients in clients_list:
        batch = min(clients, max_batch_size)
        with GpuBusy(reader) as busy:
            done = runner.measure(batch, seconds)
        rows.append({"variant": "ceiling", "clients": clients, "batch": batch,
                     "requests_per_s": round(done.items_per_s, 2),
                     "tokens_per_s": round(done.tokens_per_s, 1),
                     "p50_ms": round(done.batch_p50_ms, 1), "gpu_busy_pct": busy.percent})
    del runner
    free_device_memory()
    return rows


def served(folder: str, name: str, path: str, clients_list: tuple[int, ...],
           max_batch_size: int, seconds: float, max_tokens: int, num_gpus: float,
           reader: Reader, **spec_options) -> list[dict]:
    """`raysight serve` (one model deployment, `num_gpus` per replica) on the Ray this
    process runs, under closed-loop HTTP clients in their own process, per client count."""
    from bench.loadgen import Load, LoadGenerator
    from bench.servers import raysight_server

    rows = []
    with LoadGenerator() as loadgen, raysight_server(
            folder, name, max_batch_size, max(clients_list), with_mbs1=False,
            num_gpus=num_gpus, **spec_options) as url:
        for clients in clients_list:
            load = Load(url=url, path=path, model=name, clients=clients, seconds=seconds,
                        windows=1, max_tokens=max_tokens,
                        max_requests=40 * clients + int(seconds * 2000))
            with GpuBusy(reader) as busy:
                result = loadgen.run(load)
            if set(result["statuses"]) != {"200"}:
                raise RuntimeError(f"{path} at {clients} clients answered {result['statuses']}")
            window = result["windows"][0]
            rows.append({"variant": "served", "clients": clients,
                         "requests_per_s": round(window["requests_per_s"], 2),
                         "tokens_per_s": round(window["tokens_per_s"], 1),
                         "p50_ms": round(window["p50_ms"], 1),
                         "p99_ms": round(window["p99_ms"], 1),
                         "mean_batch": window["mean_batch"], "gpu_busy_pct": busy.percent})
    return rows


def offline(folder: str, images: int, batch: int, loop_seconds: float, scratch: Path,
            device: str, dtype: str, reader: Reader) -> dict:
    """The embed job (Ray Data, end to end) over `images` JPEGs against the plain loop over
    them (at most `loop_seconds`), both on `device` in `dtype`."""
    from bench.offline import PlainLoop, embed_job, jpeg_folder

    folder_of_images = jpeg_folder(images)
    loop = PlainLoop(folder, folder_of_images, batch, device=device, dtype=dtype)
    with GpuBusy(reader) as loop_busy:
        loop_rates = loop.run(scratch / "plain-loop", 1, loop_seconds)
    del loop
    free_device_memory()
    with GpuBusy(reader) as job_busy:
        job_rate, details = embed_job(folder, folder_of_images, scratch / "embed-job", batch,
                                      None, device=device, dtype=dtype)
    return {"images": images, "batch": batch,
            "job_images_per_s": round(job_rate, 1), "job_gpu_busy_pct": job_busy.percent,
            "job_plan": details["plan"], "job_seconds": details["job_seconds"],
            "loop_images_per_s": round(loop_rates[0], 1), "loop_gpu_busy_pct": loop_busy.percent,
            "ratio_to_loop": round(job_rate / loop_rates[0], 3)}
