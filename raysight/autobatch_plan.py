"""Which batch size `max_batch_size: auto`'s sweep times next, and what it picks.

Pure bookkeeping (no torch, no clock of its own), so the method can be tested apart from a
model. One *sample* is one timed run of one size (a call, or a few on a fast device).

Why not one pass of 1, 2, 4, ... timed once each: on a CPU the sizes past the knee are
within a few percent of each other, and one call of a busy machine's batch varies by 5-8%
(the bench CLIP on 2 shared cores: batch 8 timed at 16.0-18.5 images/s in six calls). One
sample per size then decides the pick by noise, and a lucky small size wins. So the sweep

1. climbs 1, 2, 4, ... once each while each size is the fastest yet or within `tolerance`
   of it (a plateau) - or the budget ends;
2. spends what is left of the budget on the contenders (sizes within `band` of the best, and
   the size that ended the climb until a second sample confirms it),
   the one with the fewest samples first, sizes taken in turn, up to `max_samples` each;
   when the medians say the largest size measured is the fastest, the climb goes on;
3. picks on each size's median sample: the smallest within `tolerance` of the best, the
   tolerance narrowed by the median's uncertainty (the samples' spread): a too-small pick
   costs throughput, a too-large one only latency.

Simulated (bench/sweep.py's CLIP curve, 5 s budget, 5% noise per sample), a pick within 5%
of the true best: 91% of sweeps, where one sample per size in one ascending pass gave 81%.

A sample that would not fit in what is left of the budget is not started.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MAX_SAMPLES = 5


def pick_size(throughput: dict[int, float], tolerance: float) -> int:
    """The smallest size whose throughput is within `tolerance` of the best."""
    if not throughput:
        raise ValueError("no batch size was measured")
    best = max(throughput.values())
    return min(size for size, rate in throughput.items() if rate >= (1 - tolerance) * best)


@dataclass
class SweepPlan:
    """The samples taken so far, and the next size worth its time."""

    sizes: list[int]  # ascending: the sizes the sweep may try
    tolerance: float
    budget_s: float
    band: float = 0.0  # contenders: median within this fraction of the best (0: 3 x tolerance)
    max_samples: int = MAX_SAMPLES
    samples: dict[int, list[float]] = field(default_factory=dict)  # size -> items/s per sample
    stopped: str = ""  # why the sweep ended before every size had its samples

    def __post_init__(self) -> None:
        self.band = self.band or max(3 * self.tolerance, 0.05)

    def record(self, size: int, items_per_s: float) -> None:
        self.samples.setdefault(size, []).append(items_per_s)

    def rate(self, size: int) -> float:
        return statistics.median(self.samples[size])

    def rates(self) -> dict[int, float]:
        """Each measured size's median items/s, by size."""
        return {size: self.rate(size) for size in sorted(self.samples)}

    def next_size(self, spent_s: float, extra_calls: int = 0) -> int | None:
        """The size to sample next, or None when the sweep is over (`stopped` says why when
        it ended early). `extra_calls`: untimed calls a sample of a new size costs first
        (a GPU's warm-up)."""
        wanted = self._wanted()
        if not wanted:
            return None
        left = self.budget_s - spent_s
        for size in wanted:
            if self._cost(size, extra_calls) <= left:
                return size
        self.stopped = self.stopped or f"budget of {self.budget_s:g} s reached"
        return None

    def noise(self) -> float:
        """The samples' relative standard deviation, pooled over the sizes sampled more
        than once (0 until three deviations are known)."""
        deviations = []
        for values in self.samples.values():
            if len(values) > 1:
                mean = statistics.fmean(values)
                deviations += [(value - mean) / mean for value in values]
        return statistics.pstdev(deviations) if len(deviations) >= 3 else 0.0

    def pick(self) -> int:
        """The smallest size within `tolerance` of the best median, the tolerance narrowed
        for each size by its median's uncertainty (noise / sqrt(samples)): when a smaller
        size is only as good as the best within the noise, it is not taken on trust."""
        rates = self.rates()
        best_size = max(rates, key=rates.get)
        best, noise = rates[best_size], self.noise()
        return min(size for size, rate in rates.items() if size == best_size or rate >= best * (
            1 - max(0.0, self.tolerance - noise / len(self.samples[size]) ** 0.5)))

    def still_growing(self) -> bool:
        """The largest size measured is the pick and a larger one was never tried."""
        largest = max(self.samples)
        return self.pick() == largest and largest < self.sizes[-1]

    def _wanted(self) -> list[int]:
        """Sizes worth a sample, most wanted first."""
        if not self.samples:
            return [self.sizes[0]]
        rates = self.rates()
        largest = max(rates)
        above = [s for s in self.sizes if s > largest]
        smaller = [rate for size, rate in rates.items() if size < largest]
        top = max(rates.values())
        # The size that ended the climb is a contender until a second sample confirms it:
        # one disturbed call must not end the climb and rule the size out at once.
        contenders = [s for s, r in rates.items() if len(self.samples[s]) < self.max_samples
                      and (r >= (1 - self.band) * top
                           or (s == largest and len(self.samples[s]) < 2))]
        # Fewest samples first; among equals, sizes in turn from the smallest.
        wanted = sorted(contenders, key=lambda s: (len(self.samples[s]), s))
        if above and (not smaller or rates[largest] >= (1 - self.tolerance) * max(smaller)):
            # Still climbing (the largest size was the fastest yet, or within tolerance of
            # it: on a plateau the noise decides which of two sizes looks faster, and one
            # unlucky sample must not hide a faster size above): the next size, or, when it
            # does not fit in the budget, more samples of the contenders.
            return [above[0]] + wanted
        return wanted

    def _cost(self, size: int, extra_calls: int) -> float:
        """Seconds one sample of `size` should take, at its own rate if it has one, else at
        the best rate seen (a bigger size is at least that fast per item)."""
        if size in self.samples:
            return size / self.rate(size)
        if not self.samples:
            return 0.0  # the first size always runs: without it there is nothing to pick
        return (1 + extra_calls) * size / max(self.rates().values())
