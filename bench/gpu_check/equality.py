"""Batched == single in low precision, and the rule that says when a difference is allowed.

In float32 an item's greedy tokens in a batch equal its tokens alone
(tests/unit/test_engines_batching.py). In bfloat16 and float16 a batch sums its matrix
products in another order than a single item does, so two logits that are nearly tied can
swap, and greedy decoding then takes another token from there on. That is allowed, and only
that: at the first step where the two runs' tokens differ (their prefixes are still the
same), the two tokens must be a near tie of the logits in both runs, within
`NEAR_TIE_EPS` machine epsilons of the dtype times the largest logit's size. Anything wider
is a batching bug. The rate of such flips is reported, not judged.

Embeddings have no argmax to flip: a vector in a batch must have cosine >= `MIN_COSINE` with
the same input's vector alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

# A near tie: both logits within this many epsilons of the dtype (bfloat16: 2^-7, float16:
# 2^-10, float32: 2^-23) times max(1, |largest logit|) of each other. Sixteen covers the
# rounding a deep stack of low-precision layers accumulates, and is far below the gap
# between a model's first and second choice when they are not tied.
NEAR_TIE_EPS = 16
MIN_COSINE = 0.999


def near_tie_tolerance(dtype, logits) -> float:
    """The widest logit gap that still counts as a near tie for `logits` in `dtype`."""
    import torch

    scale = max(1.0, float(logits.abs().max()))
    return NEAR_TIE_EPS * torch.finfo(dtype).eps * scale


@dataclass
class Divergence:
    """Where an item's batched tokens first left its tokens alone, and how wide the tie was."""

    row: int
    step: int
    token_alone: int
    token_batched: int
    gap_alone: float  # logit(alone's token) - logit(batched's token), in the run alone
    gap_batched: float  # the same the other way round, in the batched run
    tolerance: float

    @property
    def near_tie(self) -> bool:
        return max(self.gap_alone, self.gap_batched) <= self.tolerance


def first_divergence(row: int, alone: list[int], batched: list[int], logits_alone,
                     logits_batched, dtype) -> Divergence | None:
    """None when the two token lists are equal; else the first differing step, judged by
    each run's logits at that step (`logits_*`: one row of logits per generated step)."""
    for step, (a, b) in enumerate(zip(alone, batched)):
        if a != b:
            la, lb = logits_alone[step].float(), logits_batched[step].float()
            tolerance = near_tie_tolerance(dtype, la)
            return Divergence(row, step, a, b, float(la[a] - la[b]), float(lb[b] - lb[a]),
                              tolerance)
    if len(alone) != len(batched):
        step = min(len(alone), len(batched))
        return Divergence(row, step, -1, -1, float("inf"), float("inf"), 0.0)
    return None


@dataclass
class Generated:
    """One item's new tokens and the logits of each step, from the engine's own path."""

    token_ids: list[int]
    logits: list[Any]  # one 1-D tensor per step


@contextmanager
def logits_kept(engine) -> Iterator[list]:
    """While inside, each `generate` the engine calls also keeps its per-step logits, in
    the list yielded (one entry per call: a tuple of (batch, vocab) tensors)."""
    model = engine.model
    original = model.generate
    calls: list = []

    def generate(**kwargs):
        out = original(**kwargs, output_logits=True, return_dict_in_generate=True)
        calls.append(out.logits)
        return out.sequences

    model.generate = generate
    try:
        yield calls
    finally:
        del model.generate


def generate_with_logits(engine, prepared: list) -> list[Generated]:
    """`prepared` (one group the engine batches together, at most max_batch_size) through
    the engine's infer/postprocess in one call, with each item's logits."""
    from raysight.engines.generate import GenerateResult

    with logits_kept(engine) as calls:
        results = engine.infer_and_postprocess(prepared)
    bad = [r for r in results if not isinstance(r, GenerateResult)]
    if bad or len(calls) != 1:
        raise RuntimeError(f"one generate call was expected for {len(prepared)} items; got "
                           f"{len(calls)} calls and errors {bad[:2]}")
    steps = calls[0]
    return [Generated(r.token_ids, [steps[k][row] for k in range(len(r.token_ids))])
            for row, r in enumerate(results)]


def compare_runs(alone: list[Generated], batched: list[Generated], dtype) -> dict:
    """The near-tie rule over rows of two runs of the same items."""
    divergences = []
    for row, (a, b) in enumerate(zip(alone, batched)):
        found = first_divergence(row, a.token_ids, b.token_ids, a.logits, b.logits, dtype)
        if found is not None:
            divergences.append(found)
    wide = [d for d in divergences if not d.near_tie]
    return {
        "rows": len(alone),
        "equal_rows": len(alone) - len(divergences),
        "near_tie_rows": len(divergences) - len(wide),
        "near_tie_rate": len(divergences) / max(1, len(alone)),
        "passed": not wide and len(alone) == len(batched),
        "divergences": [dict(asdict(d), near_tie=d.near_tie) for d in divergences],
    }


def generate_batched(engine, prepared: list) -> list[Generated]:
    """Every item in the batches the engine forms (its groups, max_batch_size each)."""
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(prepared):
        groups.setdefault(item.group, []).append(index)
    size = engine.spec.max_batch_size
    batched: dict[int, Generated] = {}
    for indices in groups.values():
        for start in range(0, len(indices), size):
            chunk = indices[start:start + size]
            batched.update(zip(chunk, generate_with_logits(engine, [prepared[i] for i in chunk])))
    return [batched[i] for i in range(len(prepared))]


def batched_vs_single(engine, requests: list) -> tuple[dict, list[Generated]]:
    """Each request's tokens in the batches the engine forms against its tokens alone, by
    the near-tie rule; also the largest first-step logit difference (the dtype's noise).
    Returns the report and the batched run."""
    prepared = [engine.preprocess(request) for request in requests]
    ordered = generate_batched(engine, prepared)
    alone = [generate_with_logits(engine, [item])[0] for item in prepared]
    report = compare_runs(alone, ordered, engine.dtype)
    report["first_step_logit_diff"] = max(
        float((a.logits[0].float() - b.logits[0].float()).abs().max()) for a, b in zip(alone, ordered))
    report["distinct_answers"] = len({tuple(g.token_ids) for g in alone})
    return report, ordered


def embed_batched_vs_single(engine, requests: list) -> dict:
    """Cosine of each request's vector in one batch against its vector alone."""
    import numpy as np

    from raysight.engines.embed import Embedding

    batched = engine.run(requests)
    alone = [engine.run([request])[0] for request in requests]
    cosines = []
    for b, a in zip(batched, alone):
        if not (isinstance(b, Embedding) and isinstance(a, Embedding)):
            raise RuntimeError(f"an embedding failed: {b!r} / {a!r}")
        cosines.append(float(np.dot(b.vector, a.vector)
                             / (np.linalg.norm(b.vector) * np.linalg.norm(a.vector))))
    distinct = float(min(1 - np.dot(batched[0].vector, other.vector) for other in batched[1:]))
    return {"rows": len(requests), "min_cosine": min(cosines), "passed": min(cosines) >= MIN_COSINE,
            "min_distance_between_inputs": distinct}
