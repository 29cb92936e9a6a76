"""ModelServer: one model behind Ray Serve, as a plain class (``build_app`` applies
``serve.deployment``), so it also runs and is tested without Ray.

Per request: preprocess on a worker thread (decode and check images, apply the chat
template), then wait in the DrainBatcher for the model; the model thread runs ``infer`` and
``postprocess`` over the whole batch. The event loop only moves requests between the two, so
new requests are prepared while a batch runs, on threads that yield the CPU to the model
(``PreparePool``). A request's own error (a corrupt image, a prompt too long) comes back as
its result; its batchmates are not affected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator

from raysight.errors import InvalidRequest, RaysightError, internal_error
from raysight.spec import ModelSpec
from serve_app.batching import DrainBatcher
from serve_app.metrics import CacheMetrics, ModelMetrics, SchedulerMetrics
from serve_app.stream_events import Accepted, Delta, Failed, Final, StreamEvent

logger = logging.getLogger(__name__)

_END = object()
# A batch running longer than this is taken as a stuck model thread (see check_health).
DEFAULT_STUCK_BATCH_S = 300.0


class ModelStuck(RuntimeError):
    """check_health's verdict: this replica's model can no longer answer; Serve replaces it."""


@dataclass
class Served:
    """A model's answer to one request, and the batch it ran in (0 if it never reached one):
    its size, how long the request waited for it and how long it ran on the model.

    ``result`` is the engine's result (GenerateResult, Embedding, Classification) or the
    RaysightError that this request alone ran into.
    """

    result: Any
    batch_size: int = 0
    queue_wait_s: float = 0.0
    model_s: float = 0.0

    @property
    def error(self) -> RaysightError | None:
        return self.result if isinstance(self.result, RaysightError) else None


def _hand_over(loop, pieces: asyncio.Queue, text: str) -> None:
    """Give a streamed piece to the request's loop (from the model thread); a loop already
    closed (the replica is shutting down) has no one left to read it."""
    try:
        loop.call_soon_threadsafe(pieces.put_nowait, text)
    except RuntimeError:
        pass


class PreparePool(ThreadPoolExecutor):
    """The threads that prepare requests (decode, check, preprocess) while a batch runs:
    one per core, each at the lowest CPU priority (nice 19, Linux only).

    On a CPU the forward's torch threads take every core. Preparing the next requests on
    those cores at the same priority slowed each batch by more than the overlap gained (a
    torch thread preempted holds up its team). At the lowest priority the preparing threads
    take what the forward leaves (its serial stretches, the turnaround between batches) and
    run at full speed whenever the model waits for them: a batch then ran as fast as the
    forward alone, and throughput at 32 clients rose ~5% (README, *How the batching works*).
    More threads than cores did worse: they also contend for the GIL. On a GPU the forward
    leaves the cores free and the priority changes little.
    """

    NICE = 19

    def __init__(self, threads: int | None = None):
        super().__init__(threads or os.cpu_count() or 1, thread_name_prefix="raysight-prepare",
                         initializer=_yield_cpu, initargs=(self.NICE,))


def _yield_cpu(nice: int) -> None:
    """Lower the calling thread's CPU priority to `nice` (Linux sets it per thread; elsewhere
    the call would name a process, so nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:  # a sandbox that forbids it: prepare at the usual priority
        logger.debug("could not lower a preparing thread's priority: %s", exc)


def batch_concurrency(engine: Any, threads: int) -> int:
    """How many batches a replica runs at once by default: 2 for an embedding model on a CPU
    with at least 2 torch threads, else 1.

    On a CPU a forward split over every core loses time at each of its parallel regions'
    barriers, more so when the replica's HTTP and preprocessing threads preempt one of its
    threads; two batches side by side on half the cores each lose neither. Measured on 2
    cores with the bench's ViT-B/32 CLIP at batch 16: 27.4 images/s for two single-threaded
    batches at once against 24.1 for one two-threaded batch after another (README,
    *How the batching works*). A batch with nothing else waiting still gets every core, so
    a lone request is answered as fast as before. Generation keeps one batch (its static
    batches are long; its continuous scheduler has its own thread)."""
    if engine.task != "embed" or str(getattr(engine, "device", "cpu")) != "cpu" or threads < 2:
        return 1
    return 2


def _set_torch_threads(threads: int) -> None:
    """The calling thread's torch threads (OpenMP keeps the count per thread)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def use_cores(threads: int | None) -> int:
    """Let torch use `threads` (default: every core), whatever OMP_NUM_THREADS Ray set."""
    import torch

    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


class ModelServer:
    """Serves one model: generate (chat) or embed (vectors, zero-shot classification)."""

    def __init__(self, spec: ModelSpec, torch_threads: int | None = None, engine: Any = None,
                 stuck_batch_s: float = DEFAULT_STUCK_BATCH_S,
                 concurrent_batches: int | None = None):
        self.threads = torch_threads or os.cpu_count() or 1
        if engine is None:
            from raysight.engines import build_engine

            self.threads = use_cores(torch_threads)
            engine = build_engine(spec)
        # With `max_batch_size: auto` the engine's spec holds the size its sweep picked.
        spec = getattr(engine, "spec", spec)
        self.spec = spec
        self.name = spec.served_name
        self.engine = engine
        self.stuck_batch_s = stuck_batch_s
        self.metrics = ModelMetrics(self.name)
        self.cache_metrics = CacheMetrics(self.name)
        # The continuous scheduler steps the model as long as any sequence runs, so a request
        # prepared only in the model's gaps would wait long to be admitted: it prepares on
        # asyncio's default threads, at the usual priority.
        self.prepare_pool: ThreadPoolExecutor | None = None
        self.concurrent_batches = 1
        if engine.task == "generate" and spec.scheduler == "continuous":
            self.batcher = self._continuous_batcher()
        else:
            self.prepare_pool = PreparePool()
            self.concurrent_batches = concurrent_batches or batch_concurrency(engine, self.threads)
            self.batcher = DrainBatcher(
                self._run_batch,
                max_batch_size=spec.max_batch_size,
                wait_s=spec.batch_wait_timeout_s,
                on_batch=self.metrics.record_batch,
                concurrency=self.concurrent_batches,
                run_shared=self._run_shared_batch,
            )
        logger.info("serving %s (%s) as %r", spec.model, engine.task, self.name)

    def _continuous_batcher(self):
        """Generation scheduled per decode step (raysight/scheduler.py), on its own thread."""
        from raysight.scheduler import GenerationScheduler
        from serve_app.continuous import ContinuousBatcher

        spec = self.spec
        metrics = SchedulerMetrics(self.name)

        def on_step(stats) -> None:
            metrics.record_step(stats)
            self.record_cache_stats()

        scheduler = GenerationScheduler(
            self.engine, max_running=spec.max_running_sequences or spec.max_batch_size,
            kv_cache_tokens=spec.kv_cache_tokens,
            prefill_tokens_per_step=spec.prefill_tokens_per_step,
            admit_every_steps=spec.admit_every_steps,
            on_timing=metrics.record_timing)
        return ContinuousBatcher(scheduler, on_step=on_step,
                                 on_admitted=self.metrics.record_admission)

    def info(self) -> dict[str, Any]:
        """What clients and the ingress need to know about this model."""
        info = {
            "name": self.name,
            "model": self.spec.model,
            "task": self.engine.task,
            "max_batch_size": self.spec.max_batch_size,
        }
        choice = getattr(self.engine, "batch_choice", None)
        if choice is not None:
            info["max_batch_size_auto"] = choice.as_dict()
        if self.engine.task == "generate":
            info["scheduler"] = self.spec.scheduler
        dim = getattr(getattr(self.engine.model, "config", None), "projection_dim", None)
        if self.engine.task == "embed" and dim:
            info["dim"] = int(dim)
        return info

    async def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        """Serve's health check (every health_check_period_s): raises when the model thread
        is stuck (one batch on it for over ``stuck_batch_s``) or can run nothing more, so Serve
        replaces this replica instead of leaving requests queued behind it forever. A plain
        method: it runs on the replica's loop, never on the model thread it watches."""
        fault = self.batcher.fault()
        if fault is not None:
            raise ModelStuck(f"model {self.name!r}: {fault}")
        running = self.batcher.running_for()
        if running > self.stuck_batch_s:
            raise ModelStuck(
                f"model {self.name!r}: one batch has been running for {running:.0f}s, over "
                f"the {self.stuck_batch_s:g}s bound (deployment.stuck_batch_s); the model "
                "thread is taken to be stuck"
            )

    # -- generate ------------------------------------------------------------------------
    async def generate(self, request) -> Served:
        """Answer one chat (a GenerateRequest)."""
        wrong = self._check_task("generate")
        return Served(wrong) if wrong else await self._serve(request)

    async def generate_stream(self, request) -> AsyncIterator[StreamEvent]:
        """Stream one chat as typed events (serve_app/stream_events.py): Accepted once the
        request is prepared and queued, a Delta per change of the decoded text, then Final;
        a request refused before it was queued sends only Failed."""
        wrong = self._check_task("generate")
        if wrong:
            yield Failed(wrong)
            return
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        # on_text runs on the model thread; hop into this loop to hand the piece over.
        request = dataclasses.replace(request, on_text=lambda text: _hand_over(loop, pieces, text))
        with self.batcher.incoming():
            prepared = await self._prepare(request)
        if isinstance(prepared, RaysightError):
            yield Failed(prepared)
            return
        refused = self._refuse_unfit(prepared)
        if refused:
            yield Failed(refused)
            return
        prepared.cancelled = threading.Event()
        # Queued before Accepted goes out (the continuous scheduler queues at the call), so
        # the request is never missing from both `incoming` and the queue for long.
        running = asyncio.ensure_future(self.batcher.submit(prepared))
        # Text pieces are queued before the batch returns, so _END always comes last.
        running.add_done_callback(lambda _: pieces.put_nowait(_END))
        try:
            yield Accepted()
            while (piece := await pieces.get()) is not _END:
                yield Delta(piece)
            result, stats = running.result()
        finally:
            if not running.done():
                # The client went away: a waiting request is dropped, a running one stops
                # at its next token (both schedulers).
                prepared.cancelled.set()
                running.cancel()
        if isinstance(result, RaysightError):
            yield Failed(result)
        else:
            yield Final(result, stats.batch_size, stats.queue_wait_s)

    # -- embed ---------------------------------------------------------------------------
    async def embed(self, requests: list) -> list[Served]:
        """Embed (or classify) each EmbedRequest; each gets its own result or error."""
        wrong = self._check_task("embed")
        if wrong:
            return [Served(wrong) for _ in requests]
        return list(await asyncio.gather(*(self._serve(request) for request in requests)))

    # -- shared --------------------------------------------------------------------------
    def _check_task(self, task: str) -> RaysightError | None:
        if self.engine.task == task:
            return None
        use = "/v1/chat/completions or /predict" if self.engine.task == "generate" else (
            "/v1/embeddings, /classify or /search")
        return InvalidRequest(
            f"model {self.name!r} is a {self.engine.task} model and cannot {task}; use {use}"
        )

    def _run_shared_batch(self, prepared: list) -> list:
        """`_run_batch` on this batch's share of the threads (it runs beside others)."""
        return self._run_batch(prepared, max(1, self.threads // self.concurrent_batches))

    def _run_batch(self, prepared: list, threads: int | None = None) -> list:
        """The model thread's work for one batch (on `threads` torch threads, default all of
        the replica's); then the caches' counters go to metrics. If the batch fails outside
        the engine's per-item handling, each of its requests gets the same InternalError; the
        traceback is logged once under its id."""
        if self.concurrent_batches > 1:
            _set_torch_threads(threads or self.threads)
        try:
            return self.engine.infer_and_postprocess(prepared)
        except Exception as exc:  # noqa: BLE001 - answer every waiting request, hide details
            error = internal_error(logger, f"a batch of {len(prepared)} failed", exc)
            return [error] * len(prepared)
        finally:
            self.record_cache_stats()

    def record_cache_stats(self) -> dict:
        """Send the engine's cache counters to metrics; returns them (empty if it has none)."""
        stats_of = getattr(self.engine, "cache_stats", None)
        stats = stats_of() if stats_of is not None else {}
        try:
            self.cache_metrics.record(stats)
        except Exception:  # noqa: BLE001 - metrics must never fail a batch
            logger.exception("cache metrics failed")
        return stats

    async def _prepare(self, request) -> Any:
        if self.prepare_pool is None:
            return await asyncio.to_thread(self.engine.preprocess_safely, request)
        return await asyncio.get_running_loop().run_in_executor(
            self.prepare_pool, self.engine.preprocess_safely, request)

    def _refuse_unfit(self, prepared) -> RaysightError | None:
        """The continuous scheduler's refusal of a request that can never fit its KV budget."""
        check = getattr(self.batcher, "check", None)
        if check is None:
            return None
        try:
            check(prepared)
        except RaysightError as exc:
            return exc
        return None

    async def _serve(self, request) -> Served:
        with self.batcher.incoming():
            prepared = await self._prepare(request)
        if isinstance(prepared, RaysightError):
            return Served(prepared)
        refused = self._refuse_unfit(prepared)
        if refused:
            return Served(refused)
        gone = threading.Event()
        if hasattr(prepared, "cancelled"):  # a chat: it may stop early if its client goes
            prepared.cancelled = gone
        try:
            result, stats = await self.batcher.submit(prepared)
        except asyncio.CancelledError:
            gone.set()  # Serve cancelled the request: its client disconnected
            raise
        return Served(result, stats.batch_size, stats.queue_wait_s, stats.run_s)

    def __del__(self) -> None:
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()
        pool = getattr(self, "prepare_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
