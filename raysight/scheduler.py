"""Iteration-level (continuous) batching for the generate engine.

Requests join and leave the running batch at every decode step instead of waiting for a
whole `generate` call to end. Each `step()`:
1. retires requests whose client went away (waiting or running);
2. admits waiting requests while there is room (raysight/scheduler_admission.py: running
   set, KV budget, prefill budget, and when): the admitted prompts are prefilled together
   (their images through the vision-feature cache), each picks its first token, and they
   join the batch (raysight/scheduler_kv.py);
3. runs one batched decode step for every running sequence;
4. retires sequences that hit an end-of-sequence token, their max_new_tokens or whose
   client went away, freeing their rows of the cache at once.
Every new token's text is handed to the request's `on_text` as it is chosen.

Long prompts do not stall the others for long: while sequences decode, a step prefills at
most prefill_tokens_per_step prompt tokens (but always at least one request), so decoding
goes on between admissions; with none decoding it admits all that fit, in forwards of at
most that many tokens. A single prompt longer than that budget is still prefilled in one go.

Everything architecture-specific (prefill inputs, positions, stop tokens) comes from the
engine's family (raysight/families/stepping.py); the scheduler names no architecture.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator

from raysight.engines.generate import (GeneratedTokens, GenerateEngine, IncrementalText,
                                       PreparedChat)
from raysight.errors import RaysightError, internal_error
from raysight.sampling import choose_token
from raysight.scheduler_admission import Admission
from raysight.scheduler_kv import BatchKV
from raysight.scheduler_sequence import Done, SchedulerStats, Sequence, SequenceStats

__all__ = ["GenerationScheduler", "SchedulerStats", "SequenceStats"]

logger = logging.getLogger(__name__)


class GenerationScheduler:
    """Continuous batching over a GenerateEngine. `submit` may be called from any thread;
    `step` (or `run`) runs on the one thread that owns the model."""

    def __init__(self, engine: GenerateEngine, max_running: int, kv_cache_tokens: int,
                 prefill_tokens_per_step: int, admit_every_steps: int = 1,
                 on_timing: Callable[[str, float], None] | None = None,
                 finish_horizon: int | None = None):
        self.admission = Admission(max_running, kv_cache_tokens, prefill_tokens_per_step,
                                   admit_every_steps, finish_horizon)
        self.engine = engine
        self.family = engine.family
        self.kv_cache_tokens = kv_cache_tokens
        self.on_timing = on_timing  # ("ttft" | "tpot", seconds) for metrics
        self.running: list[Sequence] = []
        self.kv = BatchKV()
        self._extras: dict[str, Any] = {}
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._lock = threading.Condition()
        self._incoming = 0  # requests being prepared that will be submitted (`preparing`)
        self.steps = 0
        self.step_started: float | None = None  # monotonic start of the step running now
        # Requests finished, by reason: stop, length, cancelled (client gone), error.
        self.finished: collections.Counter[str] = collections.Counter()

    # -- the request side ------------------------------------------------------------------
    def check_fits(self, item: PreparedChat) -> None:
        """Refuse a request whose prompt plus max_new_tokens exceeds the whole KV budget."""
        self.admission.check_fits(item)

    def submit(self, item: PreparedChat, on_done: Done) -> None:
        """Queue one prepared chat; `on_done` gets its GenerateResult or error (from the model
        thread). Raises InvalidRequest if it could never fit the KV budget."""
        self.check_fits(item)
        sequence = Sequence(item, on_done, time.monotonic())
        if item.seed is not None:
            import torch

            sequence.generator = torch.Generator().manual_seed(item.seed)
        if item.on_text is not None:
            sequence.text = IncrementalText(self.engine.tokenizer, item.on_text)
        with self._lock:
            self._waiting.append(sequence)
            self._lock.notify()

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Around the preparation of a request that will be submitted: admission may wait
        for it a moment (raysight/scheduler_admission.py, gather_s). Leaving it wakes no one:
        the request's `submit` does, so a waiting admission never looks in between (one that
        is never submitted is waited for until gather_s runs out)."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def stats(self) -> SchedulerStats:
        return SchedulerStats(len(self.running), len(self._waiting),
                              self.kv.batch * self.kv.width, self.kv.nbytes(),
                              self.kv_cache_tokens)

    @property
    def idle(self) -> bool:
        return not self.running and not self._waiting

    # -- the model side --------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_wait_s: float = 0.1,
            on_step: Callable[[SchedulerStats], None] | None = None) -> None:
        """Step until `stop` is set, sleeping while there is nothing to do; `on_step` gets
        the stats after each step (for gauges)."""
        while not stop.is_set():
            with self._lock:
                if self.idle:
                    self._lock.wait(idle_wait_s)
                    continue
                if not self.running:
                    self._gather()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - keep serving; step already answered its items
                logger.exception("scheduler step failed")
            if on_step is not None:
                try:
                    on_step(self.stats())
                except Exception:  # noqa: BLE001 - metrics must never stop the loop
                    logger.exception("scheduler metrics failed")

    def _gather(self) -> None:
        """With nothing decoding, wait (holding the lock's condition) up to gather_s from the
        oldest waiting request's arrival for requests still being prepared, so that they
        are prefilled together with it."""
        admission = self.admission
        while (self._incoming and self._waiting and not self.running
               and len(self._waiting) < admission.max_running):
            left = self._waiting[0].submitted + admission.gather_s - time.monotonic()
            if left <= 0:
                return
            self._lock.wait(left)

    def wake(self) -> None:
        """Wake a sleeping `run` (e.g. after a client went away)."""
        with self._lock:
            self._lock.notify()

    def run_until_idle(self) -> None:
        while not self.idle:
            self.step()

    def step(self) -> None:
        """Admit, decode once, retire (see the module docstring)."""
        import torch

        self.steps += 1
        self.step_started = time.monotonic()
        try:
            with torch.inference_mode():
                self._drop_gone_waiting()
                self._admit()
                if self.running:
                    self._decode()
                    self.admission.decoded()
        finally:
            self.step_started = None

    def _drop_gone_waiting(self) -> None:
        with self._lock:
            gone = [s for s in self._waiting if s.gone]
            for sequence in gone:
                self._waiting.remove(sequence)
        for sequence in gone:
            self._finish(sequence, "cancelled")

    def _admit(self) -> None:
        admitted = self.admission.admit(self.running, self._waiting, self._lock,
                                        self._answered_from_cache, self._incoming)
        if not admitted:
            return
        started = time.monotonic()
        groups: dict[Any, list[Sequence]] = {}
        for sequence in admitted:  # e.g. BLIP batches only prompts of one length
            groups.setdefault(self.family.batch_key(sequence.item.inputs), []).append(sequence)
        for group in groups.values():
            for run in self.admission.forwards(group):
                self._prefill(run)
        self.admission.prefilled(time.monotonic() - started)

    def _prefill(self, group: list[Sequence]) -> None:
        """Run the group's prompts in one forward, join the batch, pick first tokens. If the
        forward fails, each prompt runs alone, so only the one that fails fails."""
        engine = self.engine
        try:
            tensors, encoded = engine.device_inputs([s.item.inputs for s in group])
            prefill = self.family.prefill(engine.model, tensors, encoded)
        except Exception as exc:  # noqa: BLE001 - isolate the failing prompt
            if len(group) == 1:
                self._deliver(group[0], _as_error(exc, "prefill failed"))
            else:
                for sequence in group:
                    self._prefill([sequence])
            return
        self.kv.join(prefill.cache, prefill.mask)
        for row, sequence in enumerate(group):
            sequence.length = prefill.lengths[row]
            sequence.offset = prefill.offsets[row]
            sequence.extras = {key: value[row:row + 1] for key, value in prefill.extras.items()}
        self.running.extend(group)
        first = len(self.running) - len(group)
        self._choose(prefill.logits, rows=range(first, len(self.running)))

    def _choose(self, logits, rows) -> None:
        """Pick the next token of each running sequence in `rows` (logits row i for the
        i-th of them); retire those that finished, freeing their cache rows."""
        greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
        finished = set()
        for index, row in enumerate(rows):
            sequence = self.running[row]
            try:
                done = self._take_token(sequence, logits[index], greedy[index])
            except Exception as exc:  # noqa: BLE001 - this sequence fails alone
                self._deliver(sequence, _as_error(exc, "choosing a token failed"))
                done = True
            if done:
                finished.add(row)
        if finished:
            keep = [row for row in range(len(self.running)) if row not in finished]
            self.kv.keep(keep)
            self.running = [self.running[row] for row in keep]
        self._restack_extras()

    def _restack_extras(self) -> None:
        import torch

        keys = self.running[0].extras.keys() if self.running else ()
        self._extras = {key: torch.cat([s.extras[key] for s in self.running]) for key in keys}

    def _decode(self) -> None:
        import torch

        device = self.engine.device
        try:
            ids = torch.tensor([[s.pending] for s in self.running], device=device)
            positions = torch.tensor([[s.length] for s in self.running], device=device)
            offsets = torch.tensor([[s.offset] for s in self.running], device=device)
            logits = self.family.decode(
                self._step_model, ids, self.kv.step_mask(), positions, offsets,
                self.kv.cache, self._extras)
            self.kv.grow()
        except Exception as exc:  # noqa: BLE001 - the batch cannot go on; answer everyone
            error = internal_error(logger, f"a decode step of {len(self.running)} failed", exc)
            for sequence in self.running:
                self._deliver(sequence, error)
            self.running, self.kv, self._extras = [], BatchKV(), {}
            return
        for sequence in self.running:
            sequence.length += 1
        self._choose(logits, rows=range(len(self.running)))

    @property
    def _step_model(self):
        return self.engine.model

    def _take_token(self, sequence: Sequence, logits, greedy: int) -> bool:
        """Choose, record and stream the next token (`greedy`: the top one, already found);
        True if the sequence is finished."""
        item = sequence.item
        if sequence.gone:
            self._finish(sequence, "cancelled")
            return True
        stops = self.engine.eos_ids
        early = len(sequence.tokens) < item.min_new_tokens and stops
        if early:
            logits = logits.clone()
            logits[list(stops)] = float("-inf")
        if item.temperature > 0 or early:
            token = choose_token(logits, item.temperature, item.top_p, sequence.generator)
        else:
            token = greedy
        if not sequence.tokens:
            sequence.first_token_at = time.monotonic()
            self._time("ttft", sequence.first_token_at - sequence.submitted)
        if token in stops:
            self._finish(sequence, "stop")
            return True
        sequence.tokens.append(token)
        sequence.pending = token
        if sequence.text is not None:
            try:
                sequence.text.add(token)
            except Exception:  # noqa: BLE001 - a broken stream must not stop the others
                logger.exception("streaming a token failed; this request streams no more")
                sequence.text = None
        if len(sequence.tokens) >= item.max_new_tokens:
            self._finish(sequence, "length")
            return True
        return False

    def _finish(self, sequence: Sequence, reason: str) -> None:
        count = len(sequence.tokens)
        if count > 1:
            self._time("tpot", (time.monotonic() - sequence.first_token_at) / (count - 1))
        output = GeneratedTokens(sequence.tokens, sequence.item.inputs.prompt_tokens, reason)
        if reason != "cancelled":
            self._remember(sequence, output)
        try:
            result = self.engine.postprocess(output)
        except Exception as exc:  # noqa: BLE001
            result = _as_error(exc, "postprocess failed")
        self._deliver(sequence, result)

    def _answered_from_cache(self, sequence: Sequence) -> bool:
        """Answer from the response cache if it holds this chat; whether it did."""
        results: list = [None]
        try:
            self.engine.answer_from_cache([sequence.item], results)
            if results[0] is None:
                return False
            answer = self.engine.postprocess(results[0])
        except Exception as exc:  # noqa: BLE001
            answer = _as_error(exc, "response cache failed")
        self._deliver(sequence, answer)
        return True

    def _remember(self, sequence: Sequence, output: GeneratedTokens) -> None:
        self.engine.remember_answers([sequence.item], [output])

    def _deliver(self, sequence: Sequence, result: Any) -> None:
        self.finished[getattr(result, "finish_reason", "error")] += 1
        stats = sequence.admitted
        if stats.batch_size:  # it ran (not refused or answered from the cache while waiting)
            ran = time.monotonic() - sequence.submitted - stats.queue_wait_s
            stats = dataclasses.replace(stats, run_s=max(0.0, ran))
        try:
            sequence.on_done(result, stats)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the others
            logger.exception("on_done callback failed")

    def _time(self, what: str, seconds: float) -> None:
        if self.on_timing is not None:
            try:
                self.on_timing(what, seconds)
            except Exception:  # noqa: BLE001 - metrics must never fail a step
                logger.exception("timing callback failed")


def _as_error(exc: Exception, what: str) -> RaysightError:
    if isinstance(exc, RaysightError):
        return exc
    return internal_error(logger, what, exc)
