"""Admission policy of the continuous scheduler (raysight/scheduler.py): when waiting
requests join the running batch, and which of them.

A step admits waiting requests, oldest first, while the running set has room
(max_running), the KV budget has room, and the step's prefill budget
(prefill_tokens_per_step prompt tokens, but always at least one request) is not spent.

KV budget: the batch cache is left padded, so it holds (running sequences) x (the longest)
token slots. A request is admitted only if, with it, that product at everyone's last token
stays within kv_cache_tokens; otherwise it waits (oldest first, nothing is ever cut short).
A request that could not fit even alone is refused (`check_fits`).

While sequences are decoding, admission happens at most once per admit_every_steps decode
steps, unless the waiting requests fill every free slot: requests that arrive one by one
are then prefilled together, which on a CPU costs much less than one prefill each between
every two decode steps.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from raysight.engines.generate import PreparedChat
from raysight.errors import InvalidRequest
from raysight.scheduler_sequence import Sequence, SequenceStats


class Admission:
    """Decides, at each step, which waiting sequences join the running batch."""

    def __init__(self, max_running: int, kv_cache_tokens: int, prefill_tokens_per_step: int,
                 admit_every_steps: int):
        if min(max_running, kv_cache_tokens, prefill_tokens_per_step, admit_every_steps) < 1:
            raise ValueError("max_running, kv_cache_tokens, prefill_tokens_per_step and "
                             "admit_every_steps must be at least 1")
        self.max_running = max_running
        self.kv_cache_tokens = kv_cache_tokens
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.admit_every_steps = admit_every_steps
        self.steps_since_admission = 0

    def check_fits(self, item: PreparedChat) -> None:
        """Refuse a request whose prompt plus max_new_tokens exceeds the whole KV budget."""
        need = item.inputs.prompt_tokens + item.max_new_tokens
        if need > self.kv_cache_tokens:
            raise InvalidRequest(
                f"this request needs {need} tokens of KV cache (a {item.inputs.prompt_tokens}-"
                f"token prompt plus max_tokens={item.max_new_tokens}); this model's budget is "
                f"{self.kv_cache_tokens} (kv_cache_tokens): ask for fewer new tokens or send a "
                "shorter prompt"
            )

    def fits(self, members: list[Sequence]) -> bool:
        """Whether these sequences, running together, stay within the KV budget."""
        return len(members) * max(s.final_length for s in members) <= self.kv_cache_tokens

    def decoded(self) -> None:
        """A decode step ran."""
        self.steps_since_admission += 1

    def due(self, running: int, waiting: int) -> bool:
        """Admit now if nothing runs, if the waiting requests fill every free slot, or once
        admit_every_steps decode steps have passed since the last admission."""
        if not running or self.steps_since_admission >= self.admit_every_steps:
            return True
        return waiting >= self.max_running - running

    def admit(self, running: list[Sequence], waiting: collections.deque[Sequence],
              lock: threading.Condition,
              answered: Callable[[Sequence], bool]) -> list[Sequence]:
        """Take the sequences that join now off `waiting` (under `lock`), oldest first;
        `answered(sequence)` answers one without running it (the response cache) and says
        whether it did: such a one takes no slot."""
        if not waiting or not self.due(len(running), len(waiting)):
            return []
        self.steps_since_admission = 0
        admitted: list[Sequence] = []
        spent = 0
        while len(running) + len(admitted) < self.max_running:
            with lock:
                if not waiting:
                    break
                head = waiting[0]
                prompt = head.item.inputs.prompt_tokens
                if admitted and spent + prompt > self.prefill_tokens_per_step:
                    break  # decode first; admit the rest at the next step
                if not self.fits(running + admitted + [head]):
                    break  # oldest first: wait for room rather than let others pass
                waiting.popleft()
            head.admitted = SequenceStats(len(running) + len(admitted) + 1,
                                          time.monotonic() - head.submitted)
            if not answered(head):
                spent += prompt
                admitted.append(head)
        return admitted
