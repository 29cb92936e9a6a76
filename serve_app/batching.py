"""Drain-when-free batching: whenever the model is free, run everything waiting (up to the max).

Why not ``@serve.batch``: in Ray 2.60 it closes a batch ``batch_wait_timeout_s`` after the
batch's first request and queues the closed batch behind the one running. Requests that
arrive during a forward are therefore cut into small batches on a timer instead of being
merged into the next one, and raising ``max_concurrent_batches`` only runs those small
batches side by side on the same cores. This batcher forms a batch when the model becomes
free, from everything queued by then, so under load every batch is as full as the queue.

Measured with the earlier harness (``serve_app/benchmark.py``, now the bench scenario
``python -m bench --only serve_batch``; random ViT-B/32-shaped CLIP, image embeddings, 32
closed-loop clients in another process, 2 cores shared with a training job, max_batch_size
16): this batcher ran batches of 16 (mean 15.9) at 12.5 req/s, 87% of the engine alone on
full batches (14.4 img/s); ``@serve.batch`` formed batches of mean 1.6 and served 8.3 req/s;
max_batch_size=1 served 7.8 req/s. The README gives the scenario's latest figures.

The model runs on one dedicated thread, so the replica's event loop keeps accepting,
preprocessing and answering requests while a batch runs.

Refill: for a moment after a batch of n ends (``refill_fraction`` of its run time), the next
batch waits for n more requests than were waiting when it ended, because the clients just
answered are likely to be sending again. Without it, closed-loop clients lock into
alternating batches for good: measured in the benchmark, 32 chat clients ran batches of
1, 31, 1, 31, ... and 8 clients split into two batches of 4, each batch a whole prefill and
decode pass. The moment is a quarter of the batch's run time: with a tenth, 8 embedding
clients through Serve's proxy (whose hop spreads their return over more than a tenth of a
~280 ms batch) split into batches of 4 (mean 4.0-4.25, 18.4-19.1 images/s); with a quarter
they stayed one batch of 8 (22.4-23.6 images/s; scratch A/B on 2 cores, 2026-12-01). Clients that came back in time but are still being prepared when the refill
ends (a batch's worth of images is decoded one after another) are waited for as well, up to
the wait for requests being prepared. Independent users (an open loop) do not come back,
and waiting for them would
idle the model: a refill that gains less than half of what it waited for costs credit, and
with none left the batcher stops refilling, trying again after a few batches.

Concurrency: with ``concurrency`` > 1 (an embedding model on a CPU, serve_app/deployment.py)
up to that many batches run at once, each through ``run_shared`` (on its share of the
cores), while the replica has lately held more requests than one batch takes; otherwise a
batch runs alone through ``run_batch`` (on every core) and no other starts beside it.

Burst wait: a batch smaller than the maximum waits up to ``wait_s`` for a burst still
arriving. The same credit rule applies to it: a wait that gains no request costs credit, and
without credit the batcher stops waiting (trying again every few batches). A lone
closed-loop client, which nobody ever joins, so stops paying ``wait_s`` on every request;
a burst that does gain restores the credit at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchStats:
    """What one item saw: the size of the batch it ran in, how long it waited for it, and how
    long that batch ran on the model thread."""

    batch_size: int
    queue_wait_s: float
    run_s: float = 0.0


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    enqueued: float


# Share of a batch's run time that the next batch may wait to refill (see the module doc).
REFILL_FRACTION = 0.25
# Share of the last batch's run time that a batch may wait for requests being prepared.
PREPARE_WAIT_FRACTION = 0.25
# Refill credit: a failed refill costs this much, a batch that did not try earns back this.
_REFILL_PENALTY = 0.5
_REFILL_RECOVERY = 0.1


class DrainBatcher(Generic[In, Out]):
    """Runs ``run_batch(items) -> results`` (same length, same order) on a model thread.

    ``submit(item)`` waits for the item's result. A batch starts as soon as the model is
    free and something is waiting; if fewer than ``max_batch_size`` items are waiting, it
    waits up to ``wait_s`` for more (a burst that is still arriving joins the batch). Until
    ``refill_fraction`` x (the last batch's run time) after that batch ended, it also waits
    for the items that were waiting then plus as many as that batch held (0 turns this off).
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        max_batch_size: int,
        wait_s: float = 0.0,
        on_batch: Callable[[int, list[float]], None] | None = None,
        refill_fraction: float = REFILL_FRACTION,
        concurrency: int = 1,
        run_shared: Callable[[list[In]], Sequence[Out]] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        if not 0 <= refill_fraction <= 1:
            raise ValueError(f"refill_fraction must be in [0, 1], got {refill_fraction}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.run_batch = run_batch
        self.concurrency = concurrency
        self.run_shared = run_shared or run_batch
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.refill_fraction = refill_fraction
        self.on_batch = on_batch  # (batch size, queue waits in s) for metrics
        self._goal = max_batch_size  # `_full` is set once this many items wait
        self._goal_is_here = False  # ...or, if True, once every incoming request waits
        self._refill_goal = 0  # items the next batch waits for while refilling
        self._refill_until = 0.0  # monotonic time; the refill window of the last batch
        self._refill_credit = 1.0  # refills are tried while > 0 (see the module doc)
        self._burst_credit = 1.0  # burst waits are tried while > 0 (see the module doc)
        self.burst_waits = 0  # burst waits tried, and those that gained nothing
        self.failed_burst_waits = 0
        self.refills = 0  # refill waits tried, and those that gained less than half
        self.failed_refills = 0
        self._waiting: deque[_Waiting] = deque()
        self._incoming = 0  # requests in the replica still being prepared (see `incoming`)
        self._last_run_s = 0.0  # how long the last batch ran
        self._arrived: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._slot_free: asyncio.Event | None = None  # set when a running batch ends
        self._worker: asyncio.Task | None = None
        self._model_threads = ThreadPoolExecutor(concurrency, thread_name_prefix="raysight-model")
        self._running: dict[int, float] = {}  # running batches: id -> monotonic start
        self._running_items = 0
        self._peak_load = 0  # most requests in the replica lately (see `_note_load`)
        self._peak_at = 0.0
        self._solo = False  # the running batch has the cores to itself (see `_shares`)
        self._batch_tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def running_for(self) -> float:
        """Seconds the longest-running batch has been on a model thread (0 when none runs)."""
        starts = list(self._running.values())
        return time.monotonic() - min(starts) if starts else 0.0

    def fault(self) -> str | None:
        """Why this batcher can no longer run batches, or None while it can: closed, or its
        worker task ended with an error (then nothing queued would ever run)."""
        if self._closed:
            return "the batcher is closed"
        worker = self._worker
        if worker is not None and worker.done() and not worker.cancelled():
            error = worker.exception()
            if error is not None:
                return f"the batch worker died: {type(error).__name__}: {error}"
        return None

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around the preparation of a request that will be submitted: while it is prepared,
        a batch that forms waits for it (up to `prepare_wait_s`) instead of leaving it to
        wait for the whole next batch."""
        self._incoming += 1
        self._note_load()
        try:
            yield
        finally:
            self._incoming -= 1
            if self._full is not None and self._expected_here():
                self._full.set()

    def prepare_wait_s(self) -> float:
        """The longest a batch waits for requests still being prepared: a share of a batch's
        run time (a request left out waits a whole batch), at least `wait_s`."""
        return max(self.wait_s, PREPARE_WAIT_FRACTION * self._last_run_s)

    def _expected_here(self) -> bool:
        """Whether the batch being formed has what it waits for: its goal, or every request
        in the replica when fewer are there."""
        return len(self._waiting) >= min(self._goal, len(self._waiting) + self._incoming) \
            if self._goal_is_here else len(self._waiting) >= self._goal

    async def submit(self, item: In) -> tuple[Out, BatchStats]:
        """Queue `item`; return its result and the stats of the batch it ran in."""
        self._start_worker()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, future, time.monotonic()))
        self._note_load()
        self._arrived.set()
        if self._expected_here():
            self._full.set()
        return await future

    def _start_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._full = asyncio.Event()
            self._slot_free = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            if self._running and (self._solo or len(self._running) >= self.concurrency):
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            goal, patience, here_only = self.max_batch_size, self.wait_s, False
            refill_s = self._refill_until - time.monotonic()
            before = len(self._waiting)
            refilling = refill_s > 0 and before < self._refill_goal
            if refilling and self._refill_credit > 0:
                goal = min(goal, self._refill_goal)
                patience = max(patience, refill_s)
            elif refilling:
                self._refill_credit += _REFILL_RECOVERY
                refilling = False
            if not refilling and self._incoming and before < goal:
                # Requests already here, being prepared: wait for them, not for strangers.
                patience, here_only = max(patience, self.prepare_wait_s()), True
            burst = not refilling and not here_only and patience > 0 and before < goal
            if burst and self._burst_credit <= 0:
                self._burst_credit += _REFILL_RECOVERY
                burst, patience = False, 0.0
            if patience > 0 and len(self._waiting) < goal:
                await self._wait_for(goal, here_only, patience)
            if refilling and len(self._waiting) < goal and self._incoming:
                # The clients came back in time but are still being prepared (one after
                # another: a batch's worth of decoding can outlast the refill): leaving them
                # out would split the clients into two cohorts again.
                await self._wait_for(goal, True, self.prepare_wait_s())
            if refilling:
                self._score_refill(gained=len(self._waiting) - before, sought=goal - before)
            elif burst:
                self._score_burst(gained=len(self._waiting) - before)
            batch = self._take()
            if not self._waiting:
                self._arrived.clear()
            if len(self._waiting) < self.max_batch_size:
                self._full.clear()
            if not batch:
                continue
            shared = self.concurrency > 1 and self._shares()
            # Counted as running from here: the loop must not start another before it runs.
            self._running[id(batch)] = time.monotonic()
            self._running_items += len(batch)
            if self.concurrency == 1:
                await self._run(batch, shared=False)
                continue
            self._solo = not shared
            task = asyncio.get_running_loop().create_task(self._run(batch, shared))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    def _note_load(self) -> None:
        """Keep the most requests the replica held (waiting, being prepared, in a running
        batch) over the last two batches' run time (at least a second)."""
        now = time.monotonic()
        load = len(self._waiting) + self._incoming + self._running_items
        if load >= self._peak_load or now - self._peak_at > max(1.0, 2 * self._last_run_s):
            self._peak_load, self._peak_at = load, now

    def _shares(self) -> bool:
        """Whether the batch being started shares the cores with others (`run_shared`): when
        one already runs (itself shared), or when the replica has lately held more requests
        than one batch takes, so another batch will start beside it. Otherwise it runs on
        every core (`run_batch`) and no other starts beside it: one client's request, or a
        load that one batch holds, is answered as fast as the model goes."""
        self._note_load()
        return bool(self._running) or self._peak_load > self.max_batch_size

    async def _wait_for(self, goal: int, here_only: bool, patience: float) -> None:
        """Wait up to `patience` for `goal` items (or, `here_only`, for every request in the
        replica when fewer are there)."""
        self._goal, self._goal_is_here = goal, here_only
        self._full.clear()
        if not self._expected_here():
            try:
                await asyncio.wait_for(self._full.wait(), patience)
            except asyncio.TimeoutError:
                pass
        self._goal, self._goal_is_here = self.max_batch_size, False

    def _score_refill(self, gained: int, sought: int) -> None:
        self.refills += 1
        if 2 * gained >= sought:
            self._refill_credit = 1.0
        else:
            self.failed_refills += 1
            self._refill_credit = max(-1.0, self._refill_credit - _REFILL_PENALTY)

    def _score_burst(self, gained: int) -> None:
        self.burst_waits += 1
        if gained > 0:
            self._burst_credit = 1.0
        else:
            self.failed_burst_waits += 1
            self._burst_credit = max(-1.0, self._burst_credit - _REFILL_PENALTY)

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        while self._waiting and len(batch) < self.max_batch_size:
            waiting = self._waiting.popleft()
            if not waiting.future.done():  # skip requests whose caller went away
                batch.append(waiting)
        return batch

    async def _run(self, batch: list[_Waiting], shared: bool) -> None:
        started = self._running[id(batch)]
        waits = [started - waiting.enqueued for waiting in batch]
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), waits)
            except Exception:  # noqa: BLE001 - metrics must never fail a batch
                logger.exception("batch metrics callback failed")
        loop = asyncio.get_running_loop()
        items = [waiting.item for waiting in batch]
        run = self.run_shared if shared else self.run_batch
        try:
            try:
                results = await loop.run_in_executor(self._model_threads, run, items)
            finally:
                del self._running[id(batch)]
                self._running_items -= len(batch)
                self._slot_free.set()
                ended = time.monotonic()
                self._last_run_s = ended - started
                self._refill_goal = len(self._waiting) + len(batch)
                self._refill_until = ended + self.refill_fraction * (ended - started)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001 - a bug in run_batch fails this batch only
            logger.exception("a batch of %d failed", len(batch))
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        run_s = self._last_run_s
        for waiting, result, wait in zip(batch, results, waits):
            if not waiting.future.done():
                waiting.future.set_result((result, BatchStats(len(batch), wait, run_s)))

    def close(self) -> None:
        """Stop the worker and the model thread (pending callers get CancelledError)."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
        for waiting in self._waiting:
            if not waiting.future.done():
                waiting.future.cancel()
        self._waiting.clear()
        self._model_threads.shutdown(wait=False)
