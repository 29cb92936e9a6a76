"""The hostile-input corpus (tests/hostile_corpus.py, one row per case) against the whole HTTP
app over real HTTP (tests/api_server.py: the built-in models in-process, uvicorn on 127.0.0.1,
no Ray), and one bad request in a burst of good ones on every model route.

Every answer must be the row's status, JSON for an error, with the row's words in its message;
never a 5xx; after the whole table /readyz is 200 and a good request is answered.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_server import API_KEY, build_index, served_app
from tests.hostile_corpus import (CHAT, CLASSIFY, CORPUS, EMBED, GOOD_CHAT, LABELS, LONG,
                                  MAX_BODY, PREDICT, SEARCH, SURROGATE, Case, chat, classify,
                                  error_message, image_part, images, run_corpus, send, text_part)

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not HAVE_BUILTIN, reason="the built-in models are not built")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    index = build_index(tmp_path_factory.mktemp("corpus") / "shapes-index")
    # A longer batch wait than the default: a concurrent burst shares batches.
    with served_app(index, batch_wait_s=0.05, api_key=API_KEY, max_body_bytes=MAX_BODY) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def values():
    return images()


def test_the_corpus_names_distinct_cases():
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names)) >= 60
    bodies = [json.dumps([case.method, case.path, case.body, case.params, case.headers],
                         default=repr, sort_keys=True) for case in CORPUS]
    assert len(bodies) == len(set(bodies))
    assert {case.path for case in CORPUS} >= {CHAT, EMBED, PREDICT, CLASSIFY, SEARCH, "/healthz",
                                              "/readyz", "/v1/models", "/", "/search/image",
                                              "/search/indexes"}


def test_every_hostile_request_gets_a_json_answer_that_says_what_to_fix(server, values):
    started = time.perf_counter()
    problems, tally = run_corpus(server, CORPUS, values)
    print(f"\n{len(CORPUS)} cases in {time.perf_counter() - started:.1f} s; statuses {tally}")
    assert not problems, "\n".join(problems)
    assert not any(status >= 500 for status in tally)
    # Still healthy: ready, and a good request of each kind answered.
    assert server.get("/readyz").json()["status"] == "ready"
    good = send(server, Case("good chat", CHAT, GOOD_CHAT), values)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
    good = send(server, Case("good classify", CLASSIFY, classify()), values)
    assert good.status_code == 200 and good.json()["label"] in LABELS


def test_a_streamed_chat_is_refused_before_its_stream_starts(server, values):
    """A bad image in a streamed chat: a JSON 400, not an event stream that errors later."""
    response = send(server, Case("x", CHAT, chat(image_part("<text-url>"), stream=True)), values)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    good = send(server, Case("x", CHAT, chat(stream=True)), values)
    assert good.status_code == 200 and good.headers["content-type"].startswith("text/event-stream")
    assert good.text.rstrip().endswith("data: [DONE]")


# --- one bad request in a burst of good ones, per route ------------------------------------------

# Each bad request passes every HTTP-level check and fails only in the engine's preprocess, where
# it could still have joined its batchmates' batch: a corrupt image, an over-long text or label,
# text that cannot be encoded.
ISOLATION = {
    CHAT: (GOOD_CHAT, chat(image_part("<truncated-url>"), text_part("what shape?")),
           "truncated or damaged"),
    EMBED: ({"input": ["a red circle", "a blue square"]},
            {"input": ["a red circle", "x" * LONG]}, "max_text_tokens"),
    PREDICT: ({"prompt": "what shape?", "image": "<good>"},
              {"prompt": "what shape?", "image": "<text>"}, "not an image"),
    CLASSIFY: (classify(), classify(labels=["a red circle", "a blue " + SURROGATE]), "surrogate"),
    SEARCH: ({"text": "a red circle", "k": 3}, {"text": "x" * LONG, "k": 3}, "max_text_tokens"),
}
BURST = 16  # good requests around the bad one


def answer_of(path: str, body: dict) -> Any:
    """What a good answer must equal alone and in a batch."""
    if path == CHAT:
        return body["choices"][0]["message"]["content"]
    if path == EMBED:
        return [round(value, 3) for item in body["data"] for value in item["embedding"][:8]]
    if path == PREDICT:
        return body["output"]
    if path == CLASSIFY:
        return body["label"]
    return [result["id"] for result in body["results"]]


@pytest.mark.parametrize("path", list(ISOLATION))
def test_a_bad_request_fails_alone_in_a_burst_of_good_ones(server, values, path):
    good, bad, reason = ISOLATION[path]
    alone = send(server, Case("alone", path, good), values)
    assert alone.status_code == 200, alone.text
    cases = [Case("good", path, good)] * (BURST // 2) + [Case("bad", path, bad)] \
        + [Case("good", path, good)] * (BURST // 2)
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(lambda case: send(server, case, values), cases))
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * (BURST // 2) + [400] + [200] * (BURST // 2), statuses
    assert reason in error_message(answers[BURST // 2])
    good_answers = answers[:BURST // 2] + answers[BURST // 2 + 1:]
    assert all(answer_of(path, a.json()) == answer_of(path, alone.json()) for a in good_answers)
    sizes = [int(answer.headers["X-Raysight-Batch-Size"]) for answer in good_answers]
    print(f"\n{path}: 1 x 400, {len(good_answers)} x 200, batch sizes {sorted(sizes)}")
    assert max(sizes) > 1  # the burst shared batches, as the bad one would have
