"""Admission policy of the continuous scheduler (raysight/scheduler.py): when waiting
requests join the running batch, and which of them.

A step admits waiting requests, oldest first, while the running set has room
(max_running) and the KV budget has room; while sequences are decoding, also only while the
step's prefill budget (prefill_tokens_per_step prompt tokens, but always at least one
request) is not spent, so that their next token is not held up for long. With nothing
decoding there is no one to hold up: the step admits all that fit, prefilled in forwards of
at most that many prompt tokens each (`forwards`, which also bounds a forward's memory), so
a cohort that arrives together (closed-loop clients) decodes together from its first step
instead of being split into groups that then finish, come back and prefill apart for good.

KV budget: the batch cache is left padded, so it holds (running sequences) x (the longest)
token slots. A request is admitted only if, with it, that product at everyone's last token
stays within kv_cache_tokens; otherwise it waits (oldest first, nothing is ever cut short).
A request that could not fit even alone is refused (`check_fits`).

While sequences are decoding, admission happens at most once per admit_every_steps decode
steps, unless the waiting requests fill every free slot: requests that arrive one by one
are then prefilled together, which on a CPU costs much less than one prefill each between
every two decode steps.

Requests still being prepared (their images decoded, their prompt tokenized: `incoming`)
are worth a short wait, `gather_s` (a share of the last prefill's time, since one left out
costs a prefill of its own later): with nothing decoding the scheduler waits for them
before it prefills (GenerationScheduler.run), and while sequences decode it admits no one
before they are here. Closed-loop clients, who all come back when a batch ends, are so
prefilled as one cohort, as the static batcher would, instead of one alone and the rest a
step later, a split that then costs an extra prefill and a short step in every round.

Finishers first (`finish_horizon`, by default admit_every_steps): while a running sequence
is that many tokens or fewer from its max_new_tokens, admission waits for it to end (at
most admit_every_steps steps more), so a short answer about to end is not held up by
someone else's prefill: on a CPU one prefill (the vision encoder and the prompt) costs
about as much as ten decode steps, so the newcomer waits a few cheap steps and the one
ending saves a whole prefill. This comes before "the waiting fill every free slot": a
closed-loop cohort split in two (half of it came back a step or two before the rest ended)
then waits for the rest and is prefilled whole again, instead of the halves stalling each
other with a prefill in every round for good.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from raysight.engines.generate import PreparedChat
from raysight.errors import InvalidRequest
from raysight.scheduler_sequence import Sequence, SequenceStats

# Requests being prepared are waited for up to this share of the last prefill's time...
GATHER_FRACTION = 0.5
# ... and at least this long (before any prefill has been timed).
GATHER_MIN_S = 0.005


class Admission:
    """Decides, at each step, which waiting sequences join the running batch."""

    def __init__(self, max_running: int, kv_cache_tokens: int, prefill_tokens_per_step: int,
                 admit_every_steps: int, finish_horizon: int | None = None):
        if min(max_running, kv_cache_tokens, prefill_tokens_per_step, admit_every_steps) < 1:
            raise ValueError("max_running, kv_cache_tokens, prefill_tokens_per_step and "
                             "admit_every_steps must be at least 1")
        self.max_running = max_running
        self.kv_cache_tokens = kv_cache_tokens
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.admit_every_steps = admit_every_steps
        self.finish_horizon = admit_every_steps if finish_horizon is None else finish_horizon
        self.steps_since_admission = 0
        self.held = 0  # steps admission has waited for finishers since it was last due
        self.last_prefill_s = 0.0

    @property
    def gather_s(self) -> float:
        """How long requests still being prepared are waited for."""
        return max(GATHER_MIN_S, GATHER_FRACTION * self.last_prefill_s)

    def prefilled(self, seconds: float) -> None:
        """A prefill (of one admission) took this long."""
        self.last_prefill_s = seconds

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

    def due(self, running: list[Sequence], waiting: int, incoming: int,
            oldest_wait_s: float) -> bool:
        """Whether to admit now (see the module docstring)."""
        if not running:
            return True
        if incoming and oldest_wait_s < self.gather_s:
            return False  # more are on their way: prefill them together
        if self.held < self.admit_every_steps and any(
                s.item.max_new_tokens - len(s.tokens) <= self.finish_horizon for s in running):
            self.held += 1  # let the ones about to end finish first
            return False
        if waiting >= self.max_running - len(running):
            return True
        return self.steps_since_admission >= self.admit_every_steps

    def admit(self, running: list[Sequence], waiting: collections.deque[Sequence],
              lock: threading.Condition,
              answered: Callable[[Sequence], bool], incoming: int = 0) -> list[Sequence]:
        """Take the sequences that join now off `waiting` (under `lock`), oldest first;
        `answered(sequence)` answers one without running it (the response cache) and says
        whether it did: such a one takes no slot. `incoming`: requests being prepared."""
        with lock:
            if not waiting or not self.due(running, len(waiting), incoming,
                                           time.monotonic() - waiting[0].submitted):
                return []
        self.steps_since_admission = self.held = 0
        admitted: list[Sequence] = []
        spent = 0
        while len(running) + len(admitted) < self.max_running:
            with lock:
                if not waiting:
                    break
                head = waiting[0]
                prompt = head.item.inputs.prompt_tokens
                if running and admitted and spent + prompt > self.prefill_tokens_per_step:
                    break  # decode first; admit the rest at the next step
                if not self.fits(running + admitted + [head]):
                    break  # oldest first: wait for room rather than let others pass
                waiting.popleft()
            head.admitted = SequenceStats(len(running) + len(admitted) + 1,
                                          time.monotonic() - head.submitted)
            if not answered(head):
                spent += prompt
                admitted.append(head)
        # The batch each one joined: the running set with everyone admitted now.
        joined = len(running) + len(admitted)
        for sequence in admitted:
            sequence.admitted = SequenceStats(joined, sequence.admitted.queue_wait_s)
        return admitted

    def forwards(self, group: list[Sequence]) -> list[list[Sequence]]:
        """`group` (admitted together, one batch key) in runs of at most
        prefill_tokens_per_step prompt tokens (at least one sequence each): one prefill
        forward each."""
        runs: list[list[Sequence]] = []
        spent = 0
        for sequence in group:
            prompt = sequence.item.inputs.prompt_tokens
            if not runs or spent + prompt > self.prefill_tokens_per_step:
                runs.append([])
                spent = 0
            runs[-1].append(sequence)
            spent += prompt
        return runs
