"""The online path over real HTTP on a local Ray: one Serve app per module (built-in VLM and
CLIP, plus a tiny random Qwen2-VL that is slow on purpose and has room for 2 requests)."""

from __future__ import annotations

import base64
import concurrent.futures as futures
import time
from pathlib import Path

import numpy as np
import pytest

from tests.api_server import free_port
from tests.conftest import png_bytes
from tests.integration.serve_requests import (API_KEY, AUTH, COLOR_QUESTION, MAX_BODY, b64,
                                            chat_body, data_url, post, read_metrics, total)

pytestmark = pytest.mark.integration

BUILTIN_VLM = Path(__file__).resolve().parents[2] / "raysight/builtin/models/shapes-vlm"
if not (BUILTIN_VLM / "model.safetensors").is_file():
    pytest.skip("the built-in models are not built", allow_module_level=True)

@pytest.fixture(scope="module")
def shapes():
    from raysight.shapes import make_shapes

    return make_shapes(32, seed=404)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """A small index of shapes-clip image vectors, ids naming each image's caption."""
    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex
    from raysight.shapes import make_shapes
    from raysight.spec import ModelSpec

    engine = build_engine(ModelSpec(model="builtin:shapes-clip"))
    images = make_shapes(48, seed=77)
    results = engine.run([EmbedRequest(image=image) for image, _ in images])
    vectors = np.stack([result.vector for result in results])
    ids = [f"{i:02d}:{label.caption}" for i, (_, label) in enumerate(images)]
    folder = tmp_path_factory.mktemp("index")
    VectorIndex.build(vectors, ids, model="builtin:shapes-clip").save(folder)
    return folder


@pytest.fixture(scope="module")
def server(ray_session, tiny_models, index_dir):
    """Serve the module's app once; yields the base URL."""
    from ray import serve

    from raysight.spec import ModelSpec
    from serve_app.config import IndexConfig, ServeConfig, ServedModel
    from serve_app.launch import start_serving

    config = ServeConfig(
        models=[
            ServedModel(spec=ModelSpec(model="builtin:shapes-vlm", max_batch_size=8)),
            ServedModel(spec=ModelSpec(model="builtin:shapes-clip", max_batch_size=8)),
            ServedModel(
                spec=ModelSpec(model=tiny_models["qwen2-vl"], name="tiny-qwen", max_batch_size=1),
                deployment={"num_cpus": 0.5, "max_ongoing_requests": 1, "max_queued_requests": 1},
            ),
        ],
        indexes=[IndexConfig(path=str(index_dir), name="shapes")],
        port=free_port(),
        api_key=API_KEY,
        max_body_bytes=MAX_BODY,
        app_name="raysight-test",
    )
    url = start_serving(config)
    yield url
    serve.delete(config.app_name)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


# --- health, auth, models ----------------------------------------------------------------------


def test_health_routes_are_open_and_everything_else_needs_the_key(server):
    import requests

    assert requests.get(server + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(server + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["models"] == dict.fromkeys(["shapes-vlm", "shapes-clip", "tiny-qwen"], "ready")

    missing = requests.get(server + "/v1/models", timeout=10)
    wrong = requests.get(server + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    refused = post(server, "/predict", {"prompt": "hi", "image": "x"}, headers={})
    assert refused.status_code == 401
    assert "API key" in refused.json()["error"]  # /predict keeps its flat error shape


def test_models_lists_every_served_model(client):
    models = {model.id: model for model in client.models.list().data}
    assert set(models) == {"shapes-vlm", "shapes-clip", "tiny-qwen"}
    assert models["shapes-clip"].model_extra["task"] == "embed"


# --- chat ------------------------------------------------------------------------------------------


def test_openai_client_chat_with_base64_image_answers_the_colour(client, shapes):
    for image, label in shapes[:4]:
        completion = client.chat.completions.create(
            model="shapes-vlm",
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": COLOR_QUESTION},
            ]}],
            max_tokens=8,
        )
        assert completion.choices[0].message.content == label.color
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.completion_tokens >= 1
        assert completion.usage.total_tokens == (
            completion.usage.prompt_tokens + completion.usage.completion_tokens)


def test_openai_client_streams_the_same_answer(client, shapes):
    image, label = shapes[4]
    part = {"type": "image_url", "image_url": {"url": data_url(image)}}
    messages = [{"role": "user", "content": [part]}]
    whole = client.chat.completions.create(model="shapes-vlm", messages=messages)
    stream = client.chat.completions.create(
        model="shapes-vlm", messages=messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # "a", " red", " circle": one chunk per token
    assert "".join(pieces) == whole.choices[0].message.content
    assert label.color in whole.choices[0].message.content  # a caption such as "a red circle"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_dropped_stream_does_not_hurt_the_model(server, shapes):
    import requests

    body = chat_body(shapes[0][0], question="hello", model="tiny-qwen", max_tokens=48, stream=True)
    with requests.post(server + "/v1/chat/completions", json=body, headers=AUTH, stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line)
        assert first.startswith(b"data: ")
    # Closed after one event. The model finishes or drops that request and serves the next.
    again = post(server, "/v1/chat/completions", {**body, "stream": False, "max_tokens": 4})
    assert again.status_code == 200
    assert again.json()["usage"]["completion_tokens"] == 4


def test_refused_stream_is_a_plain_400(server):
    response = post(server, "/v1/chat/completions", chat_body("data:image/png;base64,AAAA", stream=True))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


def test_unsupported_options_and_wrong_models_are_refused(client, server, shapes):
    import openai

    image, _ = shapes[0]
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.chat.completions.create(**chat_body(image), n=2)
    with pytest.raises(openai.NotFoundError, match="served models: shapes-vlm"):
        client.chat.completions.create(**chat_body(image, model="gpt-4o"))
    with pytest.raises(openai.BadRequestError, match="embed model"):
        client.chat.completions.create(**chat_body(image, model="shapes-clip"))
    response = post(server, "/v1/chat/completions", {"model": "shapes-vlm"})
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]


def test_too_many_images_is_400(server, shapes):
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image, _ in shapes[:5]]
    body = {"model": "shapes-vlm", "messages": [{"role": "user", "content": parts}]}
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert "5 images; the limit is 4" in response.json()["error"]["message"]


# --- /predict --------------------------------------------------------------------------------------


def test_predict_contract(server, shapes):
    image, label = shapes[5]
    answer = post(server, "/predict", {"prompt": COLOR_QUESTION, "image": b64(image)})
    assert answer.status_code == 200 and answer.json() == {"output": label.color}
    # Through Ray Serve too: the model's own timing of the answer (queue, then model), in ms.
    timing = answer.headers["Server-Timing"]
    assert timing.startswith("queue;dur=") and ", model;dur=" in timing
    assert float(timing.split("model;dur=")[1].split(";")[0]) > 0
    for body in ({"prompt": COLOR_QUESTION}, {"image": b64(image)}, {}):
        refused = post(server, "/predict", body)
        assert refused.status_code == 400
        assert set(refused.json()) == {"error"} and "missing" in refused.json()["error"]
    not_json = post(server, "/predict", data=b"prompt=hi",
                    headers={**AUTH, "Content-Type": "text/plain"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]


# --- embeddings, classify, search ----------------------------------------------------------------


def test_embeddings_of_text_and_images(client, server, shapes):
    from raysight.shapes import ALL_CAPTIONS

    texts = client.embeddings.create(model="shapes-clip", input=list(ALL_CAPTIONS))
    text_vectors = np.array([item.embedding for item in texts.data], dtype="float32")
    assert text_vectors.shape == (len(ALL_CAPTIONS), 64)
    assert np.allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-4)
    assert texts.usage.prompt_tokens > 0

    images = [image for image, _ in shapes[:6]]
    infinity_style = client.embeddings.create(
        model="shapes-clip", input=[data_url(image) for image in images],
        extra_body={"modality": "image"})
    image_vectors = np.array([item.embedding for item in infinity_style.data], dtype="float32")
    for vector, (_, label) in zip(image_vectors, shapes[:6]):
        assert ALL_CAPTIONS[int(np.argmax(text_vectors @ vector))] == label.caption

    parts = post(server, "/v1/embeddings", {"model": "shapes-clip", "input": [
        {"type": "image_url", "image_url": {"url": data_url(images[0])}},
        {"type": "text", "text": ALL_CAPTIONS[0]},
    ]})
    assert parts.status_code == 200
    vectors = [item["embedding"] for item in parts.json()["data"]]
    assert np.allclose(vectors[0], image_vectors[0], atol=1e-5)
    assert np.allclose(vectors[1], text_vectors[0], atol=1e-5)


def test_classify_gives_the_right_labels(server, shapes):
    from raysight.shapes import ALL_CAPTIONS

    for image, label in shapes[6:12]:
        response = post(server, "/classify", {"image": b64(image), "labels": list(ALL_CAPTIONS)})
        assert response.status_code == 200
        body = response.json()
        assert body["label"] == label.caption == body["scores"][0]["label"]
        assert sum(score["score"] for score in body["scores"]) == pytest.approx(1.0, abs=1e-4)


def test_search_finds_the_right_neighbours(server):
    from raysight.shapes import make_shapes

    by_text = post(server, "/search", {"text": "a red circle", "k": 3}).json()
    assert by_text["index"] == "shapes" and by_text["model"] == "shapes-clip"
    assert [hit["id"].split(":")[1] for hit in by_text["results"]] == ["a red circle"] * 3

    image, label = make_shapes(48, seed=77)[10]  # the 11th indexed image
    by_image = post(server, "/search", {"image": b64(image), "k": 1}).json()["results"]
    assert by_image[0]["id"] == f"10:{label.caption}"
    assert by_image[0]["score"] == pytest.approx(1.0, abs=1e-4)


# --- batching, isolation, overload, limits --------------------------------------------------------


def test_concurrent_requests_form_batches_with_single_request_answers(server, shapes):
    bodies = [{"prompt": COLOR_QUESTION, "image": b64(image)} for image, _ in shapes[:24]]
    alone = [post(server, "/predict", body).json()["output"] for body in bodies]
    assert alone == [label.color for _, label in shapes[:24]]

    with futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: post(server, "/predict", body), bodies))
    assert [response.json()["output"] for response in together] == alone
    batch_sizes = [int(response.headers["X-Raysight-Batch-Size"]) for response in together]
    assert max(batch_sizes) > 1
    assert max(batch_sizes) <= 8  # the model's max_batch_size


def test_one_corrupt_image_fails_alone(server, shapes):
    good = shapes[12:19]
    corrupt = png_bytes(shapes[19][0])[:200]  # a truncated PNG
    bodies = [chat_body(image) for image, _ in good]
    bodies.insert(3, chat_body("data:image/png;base64," + base64.b64encode(corrupt).decode()))
    with futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: post(server, "/v1/chat/completions", body), bodies))
    statuses = [response.status_code for response in responses]
    assert statuses.count(400) == 1 and statuses.count(200) == 7 and statuses[3] == 400
    assert "truncated or damaged" in responses[3].json()["error"]["message"]
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses if r.status_code == 200]
    assert answers == [label.color for _, label in good]


def test_overload_is_a_fast_503_with_retry_after(server, shapes):
    # tiny-qwen holds 1 request and queues 1; a random model runs every one of its 48 tokens.
    body = chat_body(shapes[0][0], question="hello", model="tiny-qwen", max_tokens=48)

    def timed(_):
        started = time.perf_counter()
        response = post(server, "/v1/chat/completions", body)
        return response, time.perf_counter() - started

    with futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(timed, range(8)))
    rejected = [(r, seconds) for r, seconds in results if r.status_code == 503]
    served = [(r, seconds) for r, seconds in results if r.status_code == 200]
    assert rejected and served and len(rejected) + len(served) == 8
    for response, seconds in rejected:
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
        assert seconds < min(s for _, s in served) + 0.5  # refused without waiting in line
    assert all(r.json()["usage"]["completion_tokens"] == 48 for r, _ in served)


def test_oversize_body_is_413(server):
    import requests

    big = {"prompt": "x", "image": "A" * (MAX_BODY + 10)}
    response = post(server, "/predict", big)
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the cap counts bytes as they arrive
        for _ in range(3):
            yield b"A" * MAX_BODY

    chunked = requests.post(server + "/v1/embeddings", data=chunks(), timeout=60,
                            headers={**AUTH, "Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_too_large"


# Rows of the hostile corpus whose answer depends on the in-process server's own settings (its
# body cap, generation limit and index name), and its 24-megapixel images, spared the replicas.
NOT_ON_RAY = {"body over max_body_bytes", "max_tokens over the model's limit", "indexes listed",
              "chat: huge but allowed image", "classify huge but allowed image"}


def test_the_hostile_corpus_gets_the_same_answers_through_ray_serve(server):
    """tests/hostile_corpus.py's table through this Serve app: errors raised in the
    replicas cross Ray as the same JSON 4xx, and the app is ready and answers after."""
    import httpx

    from tests.hostile_corpus import CORPUS, images, run_corpus

    cases = [case for case in CORPUS if case.name not in NOT_ON_RAY]
    started = time.perf_counter()
    with httpx.Client(base_url=server, timeout=60) as client:
        problems, tally = run_corpus(client, cases, images())
        assert not problems, "\n".join(problems)
        assert client.get("/readyz").json()["status"] == "ready"
    print(f"\n{len(cases)} corpus cases through Serve in {time.perf_counter() - started:.1f} s; "
          f"statuses {tally}")
    assert not any(status >= 500 for status in tally)
    assert len(cases) >= 100


def test_metrics_reach_prometheus(server):
    """Runs last: the earlier tests' requests and batches show up in Ray's Prometheus export.
    It reports every ~10 s and has no signal to wait on, so poll."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port

    def complete(samples) -> bool:
        return (total(samples, "ray_raysight_requests_total", 'route="/predict"', 'status="200"') >= 49
                and total(samples, "ray_raysight_requests_total", 'status="503"') >= 1
                and total(samples, "ray_raysight_request_latency_s_count", 'route="/predict"') >= 49
                and total(samples, "ray_raysight_batch_size_count", 'model="shapes-vlm"') >= 1
                and total(samples, "ray_raysight_queue_wait_s_count", 'model="shapes-vlm"') >= 49)

    deadline = time.monotonic() + 60
    while not complete(samples := read_metrics(port)) and time.monotonic() < deadline:
        time.sleep(1)
    assert complete(samples), sorted({key.split("{")[0] for key, _ in samples})
    # Some shapes-vlm batches held more than one request (the concurrency test's).
    batches = total(samples, "ray_raysight_batch_size_count", 'model="shapes-vlm"')
    single = total(samples, "ray_raysight_batch_size_bucket", 'model="shapes-vlm"', 'le="1.0"')
    assert single < batches
