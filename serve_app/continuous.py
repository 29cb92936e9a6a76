"""The continuous scheduler (raysight/scheduler.py) behind the replica's event loop.

The scheduler steps on its own model thread; `submit` hands it a prepared chat and awaits
the answer. When the awaiting task is cancelled (the HTTP client went away: Serve cancels the
request, a stream's consumer stops) the request's `cancelled` event is set, and the
scheduler retires it at its next step, freeing its slot and its KV cache rows.

Same interface as DrainBatcher.submit (result, stats with batch_size and queue_wait_s), so
the deployment treats both schedulers alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

from raysight.scheduler import GenerationScheduler, SchedulerStats

logger = logging.getLogger(__name__)


class ContinuousBatcher:
    """Runs a GenerationScheduler on a model thread for one replica."""

    def __init__(self, scheduler: GenerationScheduler,
                 on_step: Callable[[SchedulerStats], None] | None = None,
                 on_admitted: Callable[[int, float], None] | None = None):
        self.scheduler = scheduler
        self.on_admitted = on_admitted  # (running set joined, queue wait s) for metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=scheduler.run, args=(self._stop,), kwargs={"on_step": on_step},
            name="raysight-scheduler", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """A request is being prepared (DrainBatcher's contract): the scheduler may wait a
        moment for it before a prefill, to prefill it with the others (GenerationScheduler.
        preparing)."""
        with self.scheduler.preparing():
            yield

    @property
    def queued(self) -> int:
        return self.scheduler.stats().waiting

    def check(self, prepared) -> None:
        """Raise InvalidRequest now if the request can never fit the KV budget."""
        self.scheduler.check_fits(prepared)

    def submit(self, prepared) -> Awaitable[tuple[Any, Any]]:
        """Queue `prepared` (a PreparedChat) now, at the call, not when the result is first
        awaited (so a request is never between `incoming` and the queue while the scheduler
        looks); await the result for (result, stats)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result, stats) -> None:
            if self.on_admitted is not None and stats.batch_size:
                try:
                    self.on_admitted(stats.batch_size, stats.queue_wait_s)
                except Exception:  # noqa: BLE001 - metrics must never lose an answer
                    logger.exception("admission metrics failed")
            try:
                loop.call_soon_threadsafe(_settle, future, (result, stats))
            except RuntimeError:  # the loop closed (replica shutting down): no one waits
                pass

        if prepared.cancelled is None:
            prepared.cancelled = threading.Event()
        self.scheduler.submit(prepared, done)
        return self._answer(prepared, future)

    async def _answer(self, prepared, future: asyncio.Future) -> tuple[Any, Any]:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            prepared.cancelled.set()  # retired at the scheduler's next step
            self.scheduler.wake()
            raise

    def running_for(self) -> float:
        """Seconds the scheduler's current step has been running (0 between steps): one
        step is one prefill or one decode, so a long one means a stuck model thread."""
        started = self.scheduler.step_started
        return 0.0 if started is None else time.monotonic() - started

    def fault(self) -> str | None:
        """Why this batcher can no longer answer, or None while it can."""
        if self._stop.is_set():
            return "the scheduler is closed"
        if not self._thread.is_alive():
            return "the scheduler thread died"
        return None

    def close(self) -> None:
        self._stop.set()
        self.scheduler.wake()


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)
