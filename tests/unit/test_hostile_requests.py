"""Hostile but well-formed requests through the real HTTP app (in-process ModelServers over
the built-in models, no Ray): each is refused alone with a JSON 400 that names what is wrong,
before the expensive work, and the requests around it are answered as usual."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raysight.spec import ModelSpec
from serve_app.config import IndexConfig, ServeConfig
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()
pytestmark = pytest.mark.skipif(not HAVE_BUILTIN, reason="the built-in models are not built")

SURROGATE = "\ud800"  # a lone UTF-16 surrogate: valid in JSON text, not encodable as UTF-8
LABELS = ["a red circle", "a blue square", "a green triangle"]


def _client(specs: list[ModelSpec], **fields):
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs(specs, **fields)
    gateway = Gateway(config, {spec.served_name: LocalClient(ModelServer(spec)) for spec in specs})
    return TestClient(build_http_api(gateway))


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    import numpy as np

    from raysight.index import VectorIndex

    # /search's text is refused before any vector is made, so random vectors do here.
    ids = [f"item-{n}" for n in range(4)]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8))
    folder = VectorIndex.build(vectors, ids).save(tmp_path_factory.mktemp("index") / "items")
    specs = [ModelSpec(model="builtin:shapes-vlm"),
             # A longer batch wait than the default, so that a concurrent burst shares batches.
             ModelSpec(model="builtin:shapes-clip", batch_wait_timeout_s=0.05)]
    with _client(specs, indexes=[IndexConfig(path=str(folder), model="shapes-clip")]) as client:
        yield client


@pytest.fixture(scope="module")
def image():
    from raysight.shapes import make_shapes

    picture, label = make_shapes(1, seed=21)[0]
    return base64.b64encode(png_bytes(picture)).decode()


def post(http, path: str, body: dict):
    # json.dumps escapes the surrogate as \ud800, as a hostile client would send it.
    return http.post(path, content=json.dumps(body),
                     headers={"Content-Type": "application/json"})


def message(response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


def chat(image: str, *parts: dict, **options) -> dict:
    return {"model": "shapes-vlm", **options, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}, *parts]}]}


# --- 1. /classify: a bad label fails alone; labels capped per request ----------------------------


def test_a_bad_label_fails_its_own_request_and_not_its_batchmates(http, image):
    good = {"model": "shapes-clip", "image": image, "labels": LABELS}
    bad = {"model": "shapes-clip", "image": image, "labels": ["a red " + SURROGATE, "a blue square"]}
    bodies = [good] * 12 + [bad] + [good] * 12
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(http, "/classify", body), bodies))
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * 12 + [400] + [200] * 12
    assert message(answers[12]).startswith("labels[0] contains a lone surrogate (\\ud800)")
    # The good ones did share forwards: the burst was batched, as the bad one would have been.
    assert max(int(answer.headers["X-Raysight-Batch-Size"]) for answer in answers[:12]) > 1
    assert {answer.json()["label"] for answer in answers if answer.status_code == 200} <= set(LABELS)


def test_labels_over_the_cap_are_refused_and_a_raised_cap_classifies_them_all(http, image):
    labels = [f"shape number {n}" for n in range(5000)]
    refused = post(http, "/classify", {"model": "shapes-clip", "image": image, "labels": labels})
    assert refused.status_code == 400
    assert message(refused) == ("5000 labels in one request; the limit is 256 "
                                "(max_labels_per_request); split the labels over several requests")
    # 5,000 distinct labels are more than the label cache holds (4,096): none may be lost.
    spec = ModelSpec(model="builtin:shapes-clip", max_labels_per_request=5000)
    with _client([spec], max_body_bytes=1_000_000) as roomy:
        answer = post(roomy, "/classify", {"image": image, "labels": labels})
    assert answer.status_code == 200, answer.text
    scores = answer.json()["scores"]
    assert sorted(score["label"] for score in scores) == sorted(labels)
    assert sum(score["score"] for score in scores) == pytest.approx(1.0, abs=1e-3)


# --- 2. text that cannot be encoded: a 400 naming the field ------------------------------------


def test_lone_surrogates_are_refused_by_field(http, image):
    cases = [
        ("/v1/chat/completions", chat(image, {"type": "text", "text": "hi " + SURROGATE}),
         "messages[0].content[1].text contains a lone surrogate (\\ud800) at character 3"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" + SURROGATE}]},
         "messages[0].content contains a lone surrogate"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/" + SURROGATE}}]}]},
         "messages[0].content[0].image_url.url contains a lone surrogate"),
        ("/predict", {"prompt": "what " + SURROGATE, "image": image},
         "prompt contains a lone surrogate"),
        ("/predict", {"prompt": "what", "image": "http://x/" + SURROGATE},
         "image contains a lone surrogate"),
        ("/v1/embeddings", {"model": "shapes-clip", "input": ["fine", "a " + SURROGATE]},
         "input 1: text contains a lone surrogate"),
        ("/v1/embeddings", {"model": "shapes-clip", "modality": "image",
                            "input": [image + SURROGATE]},
         "input 0: image contains a lone surrogate"),
        ("/classify", {"model": "shapes-clip", "image": image,
                       "labels": ["a blue square", "b " + SURROGATE]},
         "labels[1] contains a lone surrogate"),
        ("/classify", {"model": "shapes-clip", "image": SURROGATE, "labels": LABELS},
         "image contains a lone surrogate"),
        ("/search", {"text": "a red " + SURROGATE}, "text contains a lone surrogate"),
    ]
    for path, body, expected in cases:
        answer = post(http, path, body)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert expected in message(answer), (path, message(answer))


def test_nul_characters_are_ordinary_text(http, image):
    # A NUL encodes as UTF-8 and every tokenizer takes it: not refused.
    answer = post(http, "/classify", {"model": "shapes-clip", "image": image,
                                      "labels": ["a \u0000", "a blue square"]})
    assert answer.status_code == 200
    assert {score["label"] for score in answer.json()["scores"]} == {"a \u0000", "a blue square"}
    answer = post(http, "/v1/chat/completions", chat(image, {"type": "text", "text": "a\u0000"}))
    assert answer.status_code == 200


# --- 3. deeply nested JSON ------------------------------------------------------------------------


def test_deeply_nested_bodies_are_refused_and_the_server_goes_on(http, image):
    deep = "[" * 100_000 + "]" * 100_000
    answers = [
        http.post("/v1/chat/completions", content='{"messages": ' + deep + "}"),
        # Deep enough to break pickling for the replica, shallow enough for the parser.
        http.post("/v1/chat/completions", content=json.dumps(chat(image))[:-1]
                  + ', "ignored": ' + "[" * 800 + "]" * 800 + "}"),
        http.post("/classify", content='{"labels": ' + "[" * 65 + "]" * 65 + "}"),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert message(answer) == ("the request body nests JSON arrays and objects more than "
                                   "64 levels deep; the limit is 64")
    assert post(http, "/v1/chat/completions", chat(image)).status_code == 200
    # 64 levels are allowed: the body reaches validation, which explains the real problem.
    shallow = http.post("/classify", content='{"labels": ' + "[" * 63 + "]" * 63 + "}")
    assert shallow.status_code == 400 and "labels" in message(shallow)
    assert "levels deep" not in message(shallow)


# --- 4. extreme but valid sampling ----------------------------------------------------------------


def test_tiny_temperatures_decode_greedily_and_a_tiny_top_p_samples(http, image):
    def answer(**options):
        response = post(http, "/v1/chat/completions", chat(image, **options))
        assert response.status_code == 200, (options, response.text)
        return response.json()["choices"][0]["message"]["content"]

    greedy = answer(temperature=0)
    assert answer(temperature=1e-40) == greedy
    assert answer(temperature=1e-30) == greedy
    assert answer(temperature=1.0, top_p=1e-30) == greedy  # only the top token is left


# --- 5. an over-long prompt is refused before it is tokenized -------------------------------------


def test_a_two_million_character_prompt_is_refused_unread(http, image, monkeypatch):
    from raysight.families.blip import BlipFamily

    built = []
    original = BlipFamily.build_inputs
    monkeypatch.setattr(BlipFamily, "build_inputs",
                        lambda self, *args: built.append(1) or original(self, *args))
    started = time.perf_counter()
    refused = post(http, "/predict", {"prompt": "what " * 400_000, "image": image})
    took = time.perf_counter() - started
    assert refused.status_code == 400
    assert message(refused) == (
        "the prompt is 2,000,000 characters long; this model accepts at most 4096 tokens "
        "(max_text_tokens), so prompts over 131,072 characters (32 per token) are refused unread")
    assert built == []  # never tokenized
    print(f"2,000,000-character prompt refused in {took:.3f} s")
    assert post(http, "/predict", {"prompt": "what color?", "image": image}).status_code == 200
    assert built == [1]


# --- 6. images counted before any is decoded ------------------------------------------------------


def test_blip_refuses_four_images_before_decoding_any(http, monkeypatch):
    import raysight.images
    from PIL import Image

    decoded = []
    original = raysight.images.decode_image_bytes
    monkeypatch.setattr(raysight.images, "decode_image_bytes",
                        lambda data, policy: decoded.append(1) or original(data, policy))
    big = base64.b64encode(png_bytes(Image.new("RGB", (2000, 2000), "red"))).decode()
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + big}}] * 4
    refused = post(http, "/v1/chat/completions",
                   {"model": "shapes-vlm", "messages": [{"role": "user", "content": parts}]})
    assert refused.status_code == 400
    assert message(refused) == "this request has 4 images; blip models take at most 1 per request"
    assert refused.json()["error"]["code"] == "invalid_image"
    assert decoded == []
    one = post(http, "/v1/chat/completions",
               {"model": "shapes-vlm", "messages": [{"role": "user", "content": parts[:1]}]})
    assert one.status_code == 200 and decoded == [1]
