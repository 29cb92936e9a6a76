"""DrainBatcher without Ray: batches form from whatever waits when the model frees up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve_app.batching import DrainBatcher


class GatedModel:
    """A fake model: records each batch; the first batch blocks until `release()`."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.first_started = threading.Event()
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.first_started.set()
            self.gate.wait(10)
        if self.fail_on in items:
            raise RuntimeError("model bug")
        return [item.upper() for item in items]


async def started(model: GatedModel) -> None:
    await asyncio.to_thread(model.first_started.wait, 10)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_requests_arriving_during_a_batch_are_merged_into_the_next():
    async def scenario():
        model = GatedModel()
        batcher = DrainBatcher(model, max_batch_size=16)
        first = asyncio.ensure_future(batcher.submit("a"))
        await started(model)
        rest = [asyncio.ensure_future(batcher.submit(f"r{i}")) for i in range(10)]
        await asyncio.sleep(0)  # let them queue
        assert batcher.queued == 10
        await asyncio.sleep(0.2)  # the first batch runs at least this long
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        return model.batches, results

    batches, results = run(scenario())
    assert [len(batch) for batch in batches] == [1, 10]
    assert [result for result, _ in results] == ["A"] + [f"R{i}" for i in range(10)]
    assert [stats.batch_size for _, stats in results] == [1] + [10] * 10
    # Each item's stats: how long its batch ran (the gated first one held 0.2 s, the second
    # ran at once) and how long it waited for that batch (the rest waited out the first).
    first, rest = results[0][1], [stats for _, stats in results[1:]]
    assert first.run_s >= 0.2 and all(stats.run_s < 0.2 for stats in rest)
    assert first.queue_wait_s < 0.2 and all(stats.queue_wait_s >= 0.2 for stats in rest)


def test_batches_never_exceed_max_batch_size():
    async def scenario():
        model = GatedModel()
        batcher = DrainBatcher(model, max_batch_size=4)
        first = asyncio.ensure_future(batcher.submit("a"))
        await started(model)
        rest = [asyncio.ensure_future(batcher.submit(f"r{i}")) for i in range(10)]
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.gather(first, *rest)
        return model.batches

    assert [len(batch) for batch in run(scenario())] == [1, 4, 4, 2]


def test_a_failing_batch_fails_only_its_own_requests():
    async def scenario():
        model = GatedModel(fail_on="bad")
        batcher = DrainBatcher(model, max_batch_size=2)
        first = asyncio.ensure_future(batcher.submit("a"))
        await started(model)
        doomed = [asyncio.ensure_future(batcher.submit(x)) for x in ("bad", "b")]
        later = asyncio.ensure_future(batcher.submit("c"))
        await asyncio.sleep(0)
        model.gate.set()
        outcomes = await asyncio.gather(first, *doomed, later, return_exceptions=True)
        return outcomes

    first, bad, b, later = run(scenario())
    assert first[0] == "A" and later[0] == "C"
    assert isinstance(bad, RuntimeError) and isinstance(b, RuntimeError)


def test_requests_cancelled_while_waiting_are_skipped():
    async def scenario():
        model = GatedModel()
        batcher = DrainBatcher(model, max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit("a"))
        await started(model)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        await asyncio.gather(first, kept)
        return model.batches

    assert run(scenario()) == [["a"], ["kept"]]


async def _paced(batcher: DrainBatcher, count: int, every_s: float) -> None:
    """Submit `count` items one every `every_s` (an open loop), then wait for them all."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(every_s)
    await asyncio.gather(*tasks)


def test_a_burst_arriving_within_wait_s_forms_one_batch():
    async def scenario():
        model = lambda items: list(items)  # noqa: E731
        sizes: list[int] = []
        batcher = DrainBatcher(model, max_batch_size=8, wait_s=0.5,
                               on_batch=lambda size, waits: sizes.append(size))
        await _paced(batcher, 5, 0.01)
        return sizes

    assert run(scenario()) == [5]


def _closed_loop_batch_sizes(first: int, refill_fraction: float) -> list[int]:
    """8 closed-loop clients (each sends again 1 ms after its answer) on a model that takes
    150 ms a batch; `first` clients start at once, the others while their batch runs."""
    import time

    def model(items):
        time.sleep(0.15)
        return list(items)

    async def scenario():
        sizes: list[int] = []
        batcher = DrainBatcher(model, max_batch_size=8, refill_fraction=refill_fraction,
                               on_batch=lambda size, waits: sizes.append(size))

        async def client(number: int) -> None:
            await asyncio.sleep(0 if number < first else 0.02)
            for _ in range(8):
                await batcher.submit(number)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(client(n) for n in range(8)))
        return sizes

    return run(scenario())


@pytest.mark.parametrize("first", [1, 4])
def test_refill_merges_clients_that_were_answered_in_alternating_batches(first):
    # Without refill the clients answered together stay together: 1, 7, 1, 7, ... or
    # 4, 4, 4, 4, ...
    alone = _closed_loop_batch_sizes(first, refill_fraction=0)
    assert alone == [first, 8 - first] * 8
    # With it, the batch after the first waits (up to 15 ms) for the first's clients to
    # send again, and every batch after that holds all 8.
    merged = _closed_loop_batch_sizes(first, refill_fraction=0.1)
    assert merged[0] == first
    assert merged[1:8] == [8] * 7


def test_refill_waits_for_returning_clients_still_being_prepared():
    """8 closed-loop clients whose requests are prepared one after another (6 ms each: the
    last is ready ~48 ms after the answers, past a refill of 30 ms, 0.1 of a 300 ms batch)
    stay one batch of 8 instead of splitting into cohorts."""
    import time

    ended = [time.monotonic()]  # when the model last finished a batch

    def model(items):
        time.sleep(0.3)
        ended[0] = time.monotonic()
        return list(items)

    async def scenario():
        sizes: list[int] = []
        late: list[bool] = []  # per batch: its last request came after the refill window
        submitted: list[float] = []
        # A refill shorter than the preparations: what completes the batches is the wait
        # for requests being prepared, not the refill window (the default's 0.25 would be).
        batcher = DrainBatcher(model, max_batch_size=8, refill_fraction=0.1)

        def on_batch(size, waits):
            sizes.append(size)
            late.append(max(submitted) > batcher._refill_until)

        batcher.on_batch = on_batch
        preparing = asyncio.Lock()
        ready_at = [0.0]

        async def client(number: int) -> None:
            for _ in range(6):
                with batcher.incoming():
                    async with preparing:  # one decoder: preparations queue up
                        # Each is ready 6 ms after the one before it (the first 6 ms after
                        # the batch ended), on a schedule rather than after a 6 ms sleep
                        # each: on a busy machine every sleep overruns, and eight overruns
                        # in a row would outlast the prepare wait.
                        ready_at[0] = max(ready_at[0], ended[0]) + 0.006
                        await asyncio.sleep(ready_at[0] - time.monotonic())
                submitted.append(time.monotonic())
                await batcher.submit(number)

        await asyncio.gather(*(client(n) for n in range(8)))
        return sizes, late

    sizes, late = run(scenario())
    # The first request runs alone (nobody was ready); then client 0 is one request ahead,
    # so the last batch holds the other 7. Without the wait: 1, 8, 5, 3, ... (cohorts).
    assert sizes == [1, 8, 8, 8, 8, 8, 7], sizes
    # The premise: batches were completed by that wait, not within the refill window.
    assert any(late[1:]), late


def test_refill_stops_waiting_for_an_open_loop():
    """Requests from independent users (one every 10 ms, whatever the answers) do not
    come back: after two refills that gained little the batcher mostly stops waiting."""
    import time

    def model(items):
        time.sleep(0.1)
        return list(items)

    async def scenario():
        sizes: list[int] = []
        batcher = DrainBatcher(model, max_batch_size=64,
                               on_batch=lambda size, waits: sizes.append(size))
        await _paced(batcher, 300, 0.01)
        return batcher, sizes

    batcher, sizes = run(scenario())
    assert len(sizes) >= 20
    assert batcher.refills <= len(sizes) / 3
    assert batcher.failed_refills >= 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        DrainBatcher(list, max_batch_size=0)
    with pytest.raises(ValueError, match="wait_s"):
        DrainBatcher(list, max_batch_size=1, wait_s=-1)
    with pytest.raises(ValueError, match="refill_fraction"):
        DrainBatcher(list, max_batch_size=1, refill_fraction=1.5)


def _prepared_then_submitted(refill_fraction: float, prepare_s: float) -> list[int]:
    """A batch of 1 runs (100 ms); while it runs 4 requests arrive and are prepared, the
    last finishing its preparation `prepare_s` after the model is free."""
    import time

    async def scenario():
        loop = asyncio.get_running_loop()
        freed = asyncio.Event()
        ended: list[float] = []

        def model(items):
            time.sleep(0.1)
            ended.append(time.monotonic())
            loop.call_soon_threadsafe(freed.set)
            return list(items)

        sizes: list[int] = []
        batcher = DrainBatcher(model, max_batch_size=8, refill_fraction=refill_fraction,
                               on_batch=lambda size, waits: sizes.append(size))

        async def request(number: int, ready_after_s: float) -> None:
            with batcher.incoming():
                await asyncio.sleep(ready_after_s)  # being prepared
            await batcher.submit(number)

        async def last_request() -> None:
            with batcher.incoming():
                # Ready `prepare_s` after the model's end, counted from that end (not from
                # the start, which would put a busy machine's delays on top).
                await freed.wait()
                await asyncio.sleep(ended[0] + prepare_s - time.monotonic())
            await batcher.submit(3)

        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(request(n, 0.05 + n * 0.01) for n in range(3)),
                             last_request())
        return sizes

    return run(scenario())


def test_a_batch_waits_for_the_requests_being_prepared():
    # Three are ready before the model frees up, the fourth ~20 ms after: it joins them
    # (the wait is bounded by a quarter of the last batch's 100 ms).
    assert _prepared_then_submitted(refill_fraction=0, prepare_s=0.02) == [1, 4]


def test_the_wait_for_requests_being_prepared_is_bounded():
    # One being prepared for far longer than a quarter of a batch is left for the next.
    assert _prepared_then_submitted(refill_fraction=0, prepare_s=0.3) == [1, 3, 1]


def test_a_request_alone_does_not_wait_for_anything():
    import time

    async def scenario():
        batcher = DrainBatcher(lambda items: list(items), max_batch_size=8)
        began = time.perf_counter()
        _, stats = await batcher.submit("alone")
        return time.perf_counter() - began, stats

    elapsed, stats = run(scenario())
    assert stats.batch_size == 1 and elapsed < 0.05


def _lone_client_waits(requests: int, wait_s: float) -> list[float]:
    """One closed-loop client: each request sent when the last is answered; the time each
    spent queued (the burst wait, if the batcher waited)."""
    async def scenario():
        batcher = DrainBatcher(lambda items: list(items), max_batch_size=8, wait_s=wait_s)
        waits = []
        for number in range(requests):
            _, stats = await batcher.submit(number)
            waits.append(stats.queue_wait_s)
        return waits, batcher

    waits, batcher = run(scenario())
    assert batcher.burst_waits >= 2 and batcher.failed_burst_waits == batcher.burst_waits
    return waits


def test_a_lone_client_stops_paying_the_burst_wait():
    # Nobody ever joins it: after two fruitless waits the batcher waits only now and then
    # (every few batches) instead of wait_s on every request.
    waits = _lone_client_waits(20, wait_s=0.05)
    waited = [w for w in waits if w >= 0.04]
    assert waits[0] >= 0.04 and waits[1] >= 0.04
    assert len(waited) <= 6, waits


def test_a_burst_after_a_lone_client_restores_the_burst_wait():
    async def scenario():
        sizes: list[int] = []
        batcher = DrainBatcher(lambda items: list(items), max_batch_size=8, wait_s=0.05,
                               on_batch=lambda size, waits: sizes.append(size))
        for number in range(6):  # a lone client spends the credit
            await batcher.submit(number)
        # Bursts paced 10 ms apart, with a pause between them: once a burst wait gains a
        # request the credit is back, and the next burst forms one batch.
        for burst in range(6):
            sizes.clear()
            await _paced(batcher, 4, every_s=0.01)
            if sizes == [4]:
                return burst
            await asyncio.sleep(0.02)
        return None

    assert run(scenario()) is not None
