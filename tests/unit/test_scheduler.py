"""The continuous scheduler gives every request the tokens it gets alone (greedy, fp32),
whatever joins or leaves the running batch around it; it keeps its KV budget, streams, and
drops a request whose client went away. Tiny random models of each real architecture."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from raysight.engines import build_engine
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.errors import InvalidRequest
from raysight.scheduler import GenerationScheduler
from raysight.spec import ModelSpec
from tests.conftest import GENERATIVE, noise_image

PROMPTS = [
    "Describe the image.",
    "What shape is this? Answer with one word, please, and be careful about it.",
    "hi",
    "What color is the shape?",
    "Tell me a long story about this photo of a cat",
]
SIZES = [(32, 32), (48, 32), (64, 64), (40, 56), (33, 47)]
# Different lengths, so sequences leave the batch at different steps.
NEW_TOKENS = [7, 3, 9, 1, 5]
# Submitted before these steps: two at once, then one every few steps.
ARRIVE_AT = [0, 0, 2, 3, 6]


@pytest.fixture(scope="module")
def engines(tiny_models):
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            spec = ModelSpec(model=tiny_models[arch], max_batch_size=8,
                             preprocess_cache_bytes=0, vision_cache_bytes=0)
            cache[arch] = build_engine(spec)
        return cache[arch]

    return get


def _requests(rng, **kwargs):
    return [
        GenerateRequest.from_prompt(prompt, noise_image(rng, *size), max_new_tokens=new,
                                    min_new_tokens=new, **kwargs)
        for prompt, size, new in zip(PROMPTS, SIZES, NEW_TOKENS)
    ]


def _scheduler(engine, **kwargs) -> GenerationScheduler:
    options = dict(max_running=8, kv_cache_tokens=100_000, prefill_tokens_per_step=4096,
                   admit_every_steps=1)
    options.update(kwargs)
    return GenerationScheduler(engine, **options)


def _run_staggered(engine, scheduler, requests, arrive_at):
    """Submit each request before its step; step until all are answered."""
    results: dict[int, object] = {}
    step = 0
    while len(results) < len(requests):
        for index, (request, at) in enumerate(zip(requests, arrive_at)):
            if at == step:
                scheduler.submit(engine.preprocess(request),
                                 lambda result, _stats, i=index: results.__setitem__(i, result))
        scheduler.step()
        step += 1
        assert step < 500, "the scheduler did not finish"
    return [results[i] for i in range(len(requests))]


@pytest.mark.parametrize("arch", GENERATIVE)
def test_staggered_tokens_equal_single_tokens(arch, engines, rng):
    engine = engines(arch)
    requests = _requests(rng)
    scheduler = _scheduler(engine)
    together = _run_staggered(engine, scheduler, requests, ARRIVE_AT)
    alone = [engine.run([request])[0] for request in requests]
    assert all(isinstance(r, GenerateResult) for r in together + alone), together + alone
    for row, (t, a, new) in enumerate(zip(together, alone, NEW_TOKENS)):
        assert len(t.token_ids) == new
        assert t.token_ids == a.token_ids, f"{arch} row {row}: scheduled {t.token_ids} alone {a.token_ids}"
    assert len({tuple(r.token_ids) for r in together}) > 1
    # Everyone left: the batch cache is empty again.
    assert scheduler.stats().running == 0 and scheduler.stats().kv_tokens == 0


def _collect(engine, scheduler, requests):
    results: dict[int, object] = {}
    for index, request in enumerate(requests):
        scheduler.submit(engine.preprocess(request),
                         lambda result, _stats, i=index: results.__setitem__(i, result))
    return results


def _step_within_budget(scheduler) -> list[int]:
    """Step `scheduler` until idle, checking after every step that its KV tokens stay within
    the budget; the running set's size after each step."""
    running = []
    while not scheduler.idle:
        scheduler.step()
        stats = scheduler.stats()
        running.append(stats.running)
        assert stats.kv_tokens <= stats.kv_budget_tokens
    return running


def test_kv_budget_makes_requests_wait_never_cut(engines, rng):
    """A budget that holds one sequence at a time: the rest wait their turn and still get
    every token they get alone; the running set never outgrows the budget."""
    engine = engines("qwen2-vl")
    requests = _requests(rng)[:3]
    prepared = [engine.preprocess(r) for r in requests]
    biggest = max(p.inputs.prompt_tokens + p.max_new_tokens for p in prepared)
    scheduler = _scheduler(engine, kv_cache_tokens=biggest + 1)
    results = _collect(engine, scheduler, requests)
    seen_running = _step_within_budget(scheduler)
    assert max(seen_running) == 1
    alone = [engine.run([request])[0] for request in requests]
    assert [results[i].token_ids for i in range(3)] == [a.token_ids for a in alone]


def test_a_request_that_can_never_fit_is_refused(engines, rng):
    engine = engines("qwen2-vl")
    item = engine.preprocess(_requests(rng)[0])
    scheduler = _scheduler(engine, kv_cache_tokens=item.inputs.prompt_tokens + 2)
    with pytest.raises(InvalidRequest, match="kv_cache_tokens"):
        scheduler.submit(item, lambda *_: None)
    assert scheduler.idle


def test_a_cancelled_request_leaves_at_its_next_step(engines, rng):
    engine = engines("qwen2-vl")
    requests = _requests(rng)[:2]
    gone = threading.Event()
    long = GenerateRequest.from_prompt(PROMPTS[0], noise_image(rng, 32, 32), max_new_tokens=40,
                                       min_new_tokens=40, cancelled=gone)
    scheduler = _scheduler(engine)
    results = _collect(engine, scheduler, [long, *requests])
    for _ in range(3):
        scheduler.step()
    gone.set()
    scheduler.step()
    assert results[0].finish_reason == "cancelled"
    assert len(results[0].token_ids) < 40
    assert scheduler.stats().running == 1  # the 7-token request runs on; the others ended
    scheduler.run_until_idle()
    assert scheduler.finished["cancelled"] == 1
    # Its batchmates were not disturbed by it leaving.
    alone = [engine.run([request])[0] for request in requests]
    assert [results[1].token_ids, results[2].token_ids] == [a.token_ids for a in alone]


def test_a_waiting_request_whose_client_went_away_is_dropped_from_anywhere_in_the_queue(
        engines, rng):
    """Behind other waiting requests too (the queue is searched by identity, never by
    comparing the requests' tensors); the scheduler then serves the rest."""
    engine = engines("qwen2-vl")
    requests = _requests(rng)[:3]
    gone = threading.Event()
    requests[2] = dataclasses.replace(requests[2], cancelled=gone)
    scheduler = _scheduler(engine, max_running=1)
    results = _collect(engine, scheduler, requests)
    scheduler.step()  # the first runs; the other two wait, the one that goes last
    gone.set()
    scheduler.run_until_idle()
    assert results[2].finish_reason == "cancelled" and results[2].token_ids == []
    assert scheduler.finished["cancelled"] == 1
    alone = [engine.run([request])[0] for request in requests[:2]]
    assert [results[0].token_ids, results[1].token_ids] == [a.token_ids for a in alone]


def test_prefill_budget_interleaves_admission_with_decoding(engines, rng):
    """With a one-token prefill budget a step admits one request while others decode, so
    the first request gets a token at every step while the others join one by one."""
    engine = engines("qwen2-vl")
    requests = _requests(rng)
    scheduler = _scheduler(engine, prefill_tokens_per_step=1)
    streamed: list[str] = []
    first = dataclasses.replace(requests[2], on_text=streamed.append)
    results = _collect(engine, scheduler, [first])
    scheduler.step()
    later = _collect(engine, scheduler, [*requests[:2], requests[3]])
    running = []
    for _ in range(3):
        scheduler.step()
        running.append(scheduler.stats().running)
    assert running[:2] == [2, 3]
    scheduler.run_until_idle()
    assert len(later) == 3
    assert "".join(streamed).strip() == results[0].text
    assert len(results[0].token_ids) == NEW_TOKENS[2]


def test_with_nothing_decoding_a_cohort_joins_whole_in_forwards_within_the_budget(
        engines, rng):
    """Requests waiting while nothing decodes all join at the first step (no one's token is
    held up by their prefill), each forward within prefill_tokens_per_step; answers equal
    those alone."""
    engine = engines("qwen2-vl")
    requests = [r for r, new in zip(_requests(rng), NEW_TOKENS) if new > 2]  # 4 of them
    prepared = [engine.preprocess(r) for r in requests]
    budget = max(p.inputs.prompt_tokens for p in prepared)  # one prompt per forward
    scheduler = _scheduler(engine, prefill_tokens_per_step=budget)
    forwards: list[int] = []
    prefill = scheduler._prefill
    scheduler._prefill = lambda group: (forwards.append(len(group)), prefill(group))
    results = _collect(engine, scheduler, requests)
    scheduler.step()
    assert scheduler.stats().running == 4 and forwards == [1, 1, 1, 1]
    scheduler.run_until_idle()
    alone = [engine.run([request])[0] for request in requests]
    assert [results[i].token_ids for i in range(4)] == [a.token_ids for a in alone]


def test_with_nothing_decoding_a_cohort_past_the_kv_budget_joins_as_far_as_it_fits(
        engines, rng):
    """Issue #19: the "admit everyone who fits" path keeps the KV budget: of a cohort
    waiting while nothing decodes, those that fit join (in forwards of one prompt each) and
    the rest wait, never failed or cut short; every one gets the tokens it gets alone."""
    engine = engines("qwen2-vl")
    requests = [r for r, new in zip(_requests(rng), NEW_TOKENS) if new > 2]  # 4 of them
    prepared = [engine.preprocess(r) for r in requests]
    finals = [p.inputs.prompt_tokens + p.max_new_tokens for p in prepared]
    budget = 2 * max(finals[:2])  # the first two fit together; a third never does
    assert 3 * max(finals[:3]) > budget
    scheduler = _scheduler(engine, kv_cache_tokens=budget,
                           prefill_tokens_per_step=max(p.inputs.prompt_tokens
                                                       for p in prepared))
    results = _collect(engine, scheduler, requests)
    seen = _step_within_budget(scheduler)
    assert seen[0] == 2 and max(seen) == 2
    alone = [engine.run([request])[0] for request in requests]
    assert [results[i].token_ids for i in range(4)] == [a.token_ids for a in alone]
    assert [len(results[i].token_ids) for i in range(4)] == [r.max_new_tokens for r in requests]


def test_seeded_sampling_is_per_request(engines, rng):
    """A seeded sampled request draws the same tokens alone and next to others."""
    engine = engines("qwen2-vl")
    requests = _requests(rng, temperature=1.0, top_p=0.9, seed=7)
    alone_scheduler = _scheduler(engine)
    alone = _collect(engine, alone_scheduler, requests[:1])
    alone_scheduler.run_until_idle()
    together_scheduler = _scheduler(engine)
    together = _collect(engine, together_scheduler, requests[:3])
    together_scheduler.run_until_idle()
    assert together[0].token_ids == alone[0].token_ids
    unseeded = [dataclasses.replace(requests[0], seed=seed) for seed in (1, 2, 3)]
    other = _scheduler(engine)
    draws = _collect(engine, other, unseeded)
    other.run_until_idle()
    assert len({tuple(draws[i].token_ids) for i in range(3)}) > 1  # seeds do change draws


def test_the_serve_batcher_reports_its_health(engines):
    """ContinuousBatcher answers the questions a replica's health check asks."""
    from serve_app.continuous import ContinuousBatcher

    batcher = ContinuousBatcher(_scheduler(engines("qwen2-vl")))
    assert batcher.fault() is None and batcher.running_for() == 0.0
    batcher.close()
    assert batcher.fault() == "the scheduler is closed"


def test_admissions_are_gathered_while_sequences_decode(engines, rng):
    """With admit_every_steps=3, requests arriving while one decodes wait (at most three
    steps) and join together; their tokens are still the ones they get alone."""
    engine = engines("qwen2-vl")
    requests = _requests(rng)
    scheduler = _scheduler(engine, admit_every_steps=3, finish_horizon=0)
    results = _collect(engine, scheduler, requests[:1])
    scheduler.step()  # nothing ran: admitted at once
    assert scheduler.stats().running == 1
    more = {}
    for index, request in enumerate(requests[2:4]):
        scheduler.submit(engine.preprocess(request),
                         lambda result, _stats, i=index: more.__setitem__(i, result))
    running = []
    for _ in range(3):
        scheduler.step()
        running.append(scheduler.stats().running)
    # Both join at the third step; the 1-token request leaves at its first token.
    assert running == [1, 1, 2]
    assert 1 in more  # ... and was answered then
    scheduler.run_until_idle()
    alone = [engine.run([request])[0] for request in [requests[0], *requests[2:4]]]
    assert [results[0].token_ids, more[0].token_ids, more[1].token_ids] == [
        a.token_ids for a in alone]


def test_a_failing_token_choice_fails_that_request_alone(engines, rng, monkeypatch):
    """An error while one sequence's token is chosen answers that request with an error;
    its batchmates finish with the tokens they get alone."""
    import raysight.scheduler as scheduler_module

    engine = engines("qwen2-vl")
    requests = _requests(rng)[:3]
    sampled = dataclasses.replace(requests[1], temperature=1.0, seed=3)
    real = scheduler_module.choose_token

    def breaks_when_sampling(logits, temperature, top_p, generator=None):
        if temperature > 0:
            raise RuntimeError("invalid multinomial distribution")
        return real(logits, temperature, top_p, generator)

    monkeypatch.setattr(scheduler_module, "choose_token", breaks_when_sampling)
    scheduler = _scheduler(engine)
    results = _collect(engine, scheduler, [requests[0], sampled, requests[2]])
    scheduler.run_until_idle()
    assert not isinstance(results[1], GenerateResult)
    alone = [engine.run([request])[0] for request in (requests[0], requests[2])]
    assert [results[0].token_ids, results[2].token_ids] == [a.token_ids for a in alone]


@pytest.mark.parametrize("max_running", [8, 2])
def test_admission_waits_for_one_about_to_finish(engines, rng, max_running):
    """Finishers first: while a running sequence is within finish_horizon tokens of its
    max_tokens, a newcomer waits for it to end instead of prefilling in between, also when
    it would fill the last free slot (max_running 2: a cohort's early half waits for the
    rest); without the horizon it joins at once. Tokens are the ones each gets alone."""
    engine = engines("qwen2-vl")
    short, newcomer = _requests(rng)[2], _requests(rng)[0]
    short = dataclasses.replace(short, max_new_tokens=3, min_new_tokens=3)
    seen = {}
    for horizon in (2, 0):
        scheduler = _scheduler(engine, finish_horizon=horizon, max_running=max_running)
        results = _collect(engine, scheduler, [short])
        scheduler.step()  # prefill (token 1) and one decode (token 2): one token to go
        more = _collect(engine, scheduler, [newcomer])
        scheduler.step()  # token 3: the short one ends in this step
        seen[horizon] = scheduler.stats()
        scheduler.run_until_idle()
        alone = [engine.run([request])[0] for request in (short, newcomer)]
        assert [results[0].token_ids, more[0].token_ids] == [a.token_ids for a in alone]
    assert (seen[2].running, seen[2].waiting) == (0, 1)  # held until the short one ended
    assert (seen[0].running, seen[0].waiting) == (1, 0)  # joined while it was ending


def test_run_waits_for_requests_being_prepared(engines, rng):
    """With nothing decoding, a request that arrives while another is still being prepared
    waits for it (up to gather_s) and both are prefilled in one admission; with nothing
    being prepared it starts at once."""
    import time

    engine = engines("qwen2-vl")
    first, second = (engine.preprocess(r) for r in _requests(rng)[:2])
    scheduler = _scheduler(engine, admit_every_steps=4)
    scheduler.admission.last_prefill_s = 4.0  # gather_s: 2 s
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    stats: dict[int, object] = {}
    done = threading.Event()

    def answered(index):
        def on_done(_result, sequence_stats):
            stats[index] = sequence_stats
            if len(stats) == 2:
                done.set()
        return on_done

    try:
        with scheduler.preparing():  # the second request is being prepared...
            scheduler.submit(first, answered(0))
            time.sleep(0.3)
        scheduler.submit(second, answered(1))  # ... and arrives 0.3 s later
        assert done.wait(60)
        # The first waited for the second (0.3 s, under gather_s), then both joined in one
        # admission, the second at once (a wait for gather_s would have been ~1.7 s; the
        # bound leaves a busy machine's thread switches room).
        assert stats[0].queue_wait_s >= 0.25 and stats[1].queue_wait_s < 1.0
        assert (stats[0].batch_size, stats[1].batch_size) == (2, 2)
        # Both ran from their admission to their answer: the same prefill and decode steps.
        assert stats[0].run_s > 0 and abs(stats[0].run_s - stats[1].run_s) < 0.5
        stats.clear()
        done.clear()
        scheduler.admission.last_prefill_s = 4.0  # a wrong wait would again be 2 s
        scheduler.submit(engine.preprocess(_requests(rng)[2]), answered(0))
        scheduler.submit(engine.preprocess(_requests(rng)[3]), answered(1))
        assert done.wait(60)
        assert stats[0].queue_wait_s < 1.0  # nothing being prepared: no wait
    finally:
        stop.set()
        scheduler.wake()
        thread.join(10)
