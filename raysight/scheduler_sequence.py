"""What the continuous scheduler (raysight/scheduler.py) keeps per request, and what it
reports: one request's place in the running batch, its stats, the scheduler's gauges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from raysight.engines.generate import IncrementalText, PreparedChat


@dataclass(frozen=True)
class SequenceStats:
    """What one request saw: the size of the running batch it joined (with everyone
    admitted in the same step), how long it waited to join, and how long it then ran (its
    prefill and decode steps, shared with the batch, until its answer)."""

    batch_size: int
    queue_wait_s: float
    run_s: float = 0.0


# Called once per request, from the model thread: (GenerateResult or RaysightError, stats).
Done = Callable[[Any, SequenceStats], None]


@dataclass(eq=False)
class Sequence:
    """One request inside the scheduler. Compared by identity (eq=False): the waiting queue
    removes a sequence by `==`, and field-wise equality would compare its input tensors."""

    item: PreparedChat
    on_done: Done
    submitted: float
    generator: Any = None
    text: IncrementalText | None = None
    tokens: list[int] = field(default_factory=list)
    length: int = 0  # tokens in this sequence's cache rows (its next text position)
    offset: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # the last chosen token: the next decode step's input
    first_token_at: float = 0.0
    admitted: SequenceStats = SequenceStats(0, 0.0)

    @property
    def final_length(self) -> int:
        """Cache slots this sequence holds at its last possible token."""
        return self.item.inputs.prompt_tokens + self.item.max_new_tokens

    @property
    def gone(self) -> bool:
        return self.item.cancelled is not None and self.item.cancelled.is_set()


@dataclass(frozen=True)
class SchedulerStats:
    running: int
    waiting: int
    kv_tokens: int  # token slots the batch cache holds now (padding included)
    kv_bytes: int
    kv_budget_tokens: int
