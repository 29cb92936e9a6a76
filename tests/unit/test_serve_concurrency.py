"""DrainBatcher with concurrency: two batches side by side under load, one on every core
otherwise (serve_app/batching.py, *Concurrency*)."""

from __future__ import annotations

import asyncio
import threading

from serve_app.batching import DrainBatcher
from tests.unit.test_serve_batching import run


class SlotModel:
    """A fake model that records, per batch, how it was run (all cores or shared) and how
    many batches were running when it started; each batch takes `run_s`."""

    def __init__(self, run_s: float):
        self.run_s = run_s
        self.lock = threading.Lock()
        self.running = 0
        self.batches: list[tuple[str, int, int]] = []  # (how, size, running at its start)

    def _run(self, how: str, items: list) -> list:
        import time

        with self.lock:
            self.running += 1
            self.batches.append((how, len(items), self.running))
        time.sleep(self.run_s)
        with self.lock:
            self.running -= 1
        return list(items)

    def solo(self, items: list) -> list:
        return self._run("solo", items)

    def shared(self, items: list) -> list:
        return self._run("shared", items)


def _closed_loop(clients: int, rounds: int, max_batch_size: int = 4) -> list[tuple[str, int, int]]:
    """`clients` closed-loop clients, each sending `rounds` requests one after another,
    against a batcher that may run 2 batches at once."""
    model = SlotModel(run_s=0.05)

    async def scenario():
        batcher = DrainBatcher(model.solo, max_batch_size=max_batch_size, concurrency=2,
                               run_shared=model.shared)

        async def client(number: int) -> None:
            for turn in range(rounds):
                result, _ = await batcher.submit((number, turn))
                assert result == (number, turn)

        await asyncio.gather(*(client(number) for number in range(clients)))

    run(scenario())
    return model.batches


def test_a_load_one_batch_holds_runs_one_batch_at_a_time_on_every_core():
    batches = _closed_loop(clients=4, rounds=5)
    assert {how for how, _, _ in batches} == {"solo"}
    assert max(running for _, _, running in batches) == 1


def test_a_load_past_one_batch_runs_two_shared_batches_side_by_side():
    batches = _closed_loop(clients=8, rounds=6)
    steady = batches[2:]  # past the start, when the first requests may come one by one
    assert steady and {how for how, _, _ in steady} == {"shared"}
    assert max(running for _, _, running in batches) == 2  # never more than the concurrency
    assert sum(size for _, size, _ in batches) == 8 * 6
    assert max(size for _, size, _ in batches) <= 4


def test_a_lone_request_after_a_heavy_load_runs_on_every_core():
    model = SlotModel(run_s=0.02)

    async def scenario():
        batcher = DrainBatcher(model.solo, max_batch_size=2, concurrency=2,
                               run_shared=model.shared)
        await asyncio.gather(*(batcher.submit(number) for number in range(8)))
        await asyncio.sleep(1.1)  # the heavy load is over a second ago
        await batcher.submit("alone")

    run(scenario())
    assert model.batches[-1] == ("solo", 1, 1)
    assert any(how == "shared" for how, _, _ in model.batches[:-1])
