"""The hostile-input corpus: one row per hostile (or odd but valid) request to the HTTP app, with
the status expected and the words the error message must contain (it names the field or the
limit, so a person can act on it). Odd but valid input expects a 200. Sent over real HTTP by
tests/unit/test_hostile_corpus.py (the app in-process) and tests/integration/test_serve_app.py
(the app on Ray Serve), with `run_corpus`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from raysight.shapes import QUESTIONS
from tests.api_server import API_KEY
from tests.conftest import png_bytes

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY = 2_000_000  # the corpus server's max_body_bytes: an oversized body stays cheap to send
LONG = 131_073  # one character over 4096 tokens (max_text_tokens) x 32 characters per token
SURROGATE = "\ud800"
LABELS = ["a red circle", "a blue square", "a green triangle"]


@dataclass(frozen=True)
class Case:
    """One hostile request. `body`: a dict/list is sent as JSON (NaN and Infinity as the bare
    words Python's json writes), bytes as they are, None as no body. Strings in `body` naming
    an entry of images() ("<good>", ...) are replaced by that image. `status`: the one status
    expected; `words`: what the error message must contain (for a 200, what the body must)."""

    name: str
    path: str
    body: Any = None
    status: int = 400
    words: tuple[str, ...] = ()
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def chat(*parts: Any, **options) -> dict:
    """A chat of one user message: the good image (unless parts say otherwise) and a question."""
    # A question shapes-vlm was trained on: the good chat's answer is a shape, not empty.
    content = list(parts) or [image_part("<good-url>"), text_part(QUESTIONS["shape"])]
    return {"model": "shapes-vlm", **options, "messages": [{"role": "user", "content": content}]}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def classify(**fields) -> dict:
    return {"model": "shapes-clip", "image": "<good>", "labels": LABELS, **fields}


CHAT, EMBED, PREDICT, CLASSIFY, SEARCH = ("/v1/chat/completions", "/v1/embeddings", "/predict",
                                          "/classify", "/search")
GOOD_CHAT = chat()

CORPUS: list[Case] = [
    # --- the body itself -----------------------------------------------------------------
    Case("empty body", CHAT, b"", 400, ("body is empty",)),
    Case("invalid JSON", CHAT, b"{oops", 400, ("not valid JSON",)),
    Case("truncated JSON", CHAT, json.dumps(GOOD_CHAT)[:40].encode(), 400, ("not valid JSON",)),
    Case("JSON array body", CHAT, [GOOD_CHAT], 400, ("must be a JSON object",)),
    Case("JSON string body", EMBED, "a red circle", 400, ("must be a JSON object",)),
    Case("JSON null body", CLASSIFY, b"null", 400, ("must be a JSON object",)),
    Case("invalid UTF-8 bytes", CHAT, b'{"messages": "\xff\xfe"}', 400, ("not valid JSON",)),
    Case("raw NUL byte in JSON", EMBED, b'{"input": "a\x00b"}', 400, ("not valid JSON",)),
    Case("form-encoded body", SEARCH, b"text=a+red+circle", 400, ("not valid JSON",),
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("multipart body", CLASSIFY, b"--x\r\nContent-Disposition: form-data; name=image\r\n\r\n"
         b"abc\r\n--x--\r\n", 400, ("not valid JSON",),
         headers={"Content-Type": "multipart/form-data; boundary=x"}),
    Case("JSON sent as text/plain", SEARCH, {"text": "a red circle", "k": 2}, 200, ("results",),
         headers={"Content-Type": "text/plain"}),
    Case("a 5,000-digit integer", SEARCH, b'{"text": "a", "k": ' + b"9" * 5000 + b"}", 400,
         ("integer of more than 4,300 digits",)),
    Case("a number over the float range", SEARCH, b'{"text": "a", "k": 1e400}', 400, ("k",)),
    Case("UTF-16 JSON body", EMBED, json.dumps({"input": "a red circle"}).encode("utf-16"), 200,
         ("embedding",)),
    Case("100,000 levels of nesting", CHAT, b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000
         + b"}", 400, ("64 levels deep",)),
    Case("65 levels in an ignored field", EMBED,
         b'{"input": "a", "x": ' + b"[" * 65 + b"]" * 65 + b"}", 400, ("64 levels deep",)),
    Case("body over max_body_bytes", EMBED, b'{"input": "' + b"x" * MAX_BODY + b'"}', 413,
         ("max_body_bytes", "2,000,000")),
    # --- routes, methods, keys -----------------------------------------------------------
    Case("GET on a POST route", CHAT, method="GET", status=405, words=("Method Not Allowed",)),
    Case("PUT on /classify", CLASSIFY, {}, 405, ("Method Not Allowed",), method="PUT"),
    Case("DELETE /v1/models", "/v1/models", method="DELETE", status=405,
         words=("Method Not Allowed",)),
    Case("POST /healthz", "/healthz", {}, 405, ("Method Not Allowed",)),
    Case("PATCH /readyz", "/readyz", {"status": "ready"}, 405, ("Method Not Allowed",),
         method="PATCH"),
    Case("unknown route", "/v2/chat", {}, 404, ("Not Found",)),
    Case("no API key", EMBED, {"input": "a"}, 401, ("API key", "Authorization: Bearer"),
         headers={"Authorization": ""}),
    Case("wrong API key", EMBED, {"input": "a"}, 401, ("API key",),
         headers={"Authorization": "Bearer nope"}),
    Case("Basic instead of Bearer", EMBED, {"input": "a"}, 401, ("Bearer",),
         headers={"Authorization": "Basic " + base64.b64encode(b"u:" + API_KEY.encode()).decode()}),
    Case("page asset path traversal", "/ui/..%2f..%2fpyproject.toml", method="GET", status=404,
         words=("Not Found",)),
    Case("unknown page asset", "/ui/evil.js", method="GET", status=404, words=("no page asset",)),
    Case("thumbnail of a path not in the index", "/search/image", method="GET", status=404,
         words=("not an image of index",), params={"id": "/etc/passwd"}),
    Case("thumbnail size under its minimum", "/search/image", method="GET", status=400,
         words=("size", "16"), params={"id": "x", "size": 5}),
    Case("thumbnail size not a number", "/search/image", method="GET", status=400,
         words=("size",), params={"id": "x", "size": "huge"}),
    Case("thumbnail without id", "/search/image", method="GET", status=400, words=("id",)),
    Case("thumbnail of an unknown index", "/search/image", method="GET", status=404,
         words=("nope",), params={"id": "x", "index": "nope"}),
    # --- /v1/chat/completions ------------------------------------------------------------
    Case("chat without messages", CHAT, {"model": "shapes-vlm"}, 400, ("messages", "required")),
    Case("chat with no messages", CHAT, {"messages": []}, 400, ("messages", "at least 1")),
    Case("messages as a string", CHAT, {"messages": "hi"}, 400, ("messages",)),
    Case("messages of numbers", CHAT, {"messages": [1, 2]}, 400, ("message 0", "role")),
    Case("content part a number", CHAT, {"messages": [{"role": "user", "content": [1]}]}, 400,
         ("part 0", "'text' or 'image_url'")),
    Case("stream_options a number", CHAT, chat(stream_options=5), 400, ("stream_options",)),
    Case("message without content", CHAT, {"messages": [{"role": "user"}]}, 400, ("content",)),
    Case("content as a number", CHAT, {"messages": [{"role": "user", "content": 7}]}, 400,
         ("content",)),
    Case("unknown role", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
         ("role",)),
    Case("last message not the user's", CHAT, {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, 400,
         ("last message",)),
    Case("image in an assistant message", CHAT, {"messages": [
        {"role": "assistant", "content": [image_part("<good-url>")]},
        {"role": "user", "content": "and?"}]}, 400, ("image",)),
    Case("unknown content part type", CHAT, chat(image_part("<good-url>"),
                                                 {"type": "video", "video": "x"}), 400, ("video",)),
    Case("image_url without url", CHAT, chat({"type": "image_url", "image_url": {}}), 400,
         ("url",)),
    Case("unknown model", CHAT, {**GOOD_CHAT, "model": "gpt-4o"}, 404, ("gpt-4o",)),
    Case("empty model name", CHAT, {**GOOD_CHAT, "model": ""}, 400, ("model",)),
    Case("embed model asked to chat", CHAT, {**GOOD_CHAT, "model": "shapes-clip"}, 400,
         ("shapes-clip",)),
    Case("max_tokens 0", CHAT, chat(max_tokens=0), 400, ("max_tokens",)),
    Case("max_tokens -0.0", CHAT, chat(max_tokens=-0.0), 400, ("max_tokens",)),
    Case("max_tokens over the model's limit", CHAT, chat(max_tokens=17), 400,
         ("max_tokens", "17", "limit of 16")),
    Case("max_tokens 1e308", CHAT, chat(max_tokens=1e308), 400,
         ("max_tokens", "309-digit")),
    Case("max_tokens a 40-digit integer", CHAT, chat(max_tokens=10**40), 400, ("max_tokens",)),
    Case("max_tokens as a string", CHAT, chat(max_tokens="8"), 400, ("max_tokens", "integer")),
    Case("temperature NaN", CHAT, chat(temperature=float("nan")), 400, ("temperature",)),
    Case("temperature Infinity", CHAT, chat(temperature=float("inf")), 400, ("temperature",)),
    Case("temperature -1e-300", CHAT, chat(temperature=-1e-300), 400, ("temperature",)),
    Case("temperature -0.0 (greedy)", CHAT, chat(temperature=-0.0), 200, ("choices",)),
    Case("temperature 5e-324 (greedy)", CHAT, chat(temperature=5e-324), 200, ("choices",)),
    Case("top_p 0", CHAT, chat(top_p=0), 400, ("top_p",)),
    Case("top_p 1e-300", CHAT, chat(temperature=1, top_p=1e-300), 200, ("choices",)),
    Case("n = 2", CHAT, chat(n=2), 400, ("n",)),
    Case("stop sequences", CHAT, chat(stop=["."]), 400, ("stop sequences",)),
    Case("stream as a string", CHAT, chat(stream="yes"), 400, ("stream",)),
    Case("stream with a corrupt image", CHAT, chat(image_part("<truncated-url>"), stream=True),
         400, ("image",)),
    Case("unknown fields ignored", CHAT, chat(user="x", x_trace={"id": [1, None]}), 200,
         ("choices",)),
    Case("chat: image not base64", CHAT, chat(image_part("data:image/png;base64,@@@@")), 400,
         ("base64",)),
    Case("chat: data URL of another media type", CHAT,
         chat(image_part("data:text/plain;base64,aGVsbG8=")), 400, ("media type",)),
    Case("chat: truncated PNG", CHAT, chat(image_part("<truncated-url>")), 400,
         ("truncated or damaged",)),
    Case("chat: empty image", CHAT, chat(image_part("data:image/png;base64,")), 400, ("empty",)),
    Case("chat: a text file as the image", CHAT, chat(image_part("<text-url>")), 400,
         ("not an image",)),
    Case("chat: decompression bomb", CHAT, chat(image_part("<bomb-url>")), 413,
         ("pixels", "limit")),
    Case("chat: huge but allowed image", CHAT, chat(image_part("<huge-url>")), 200, ("choices",)),
    Case("chat: five images", CHAT, chat(*[image_part("<good-url>")] * 5), 400,
         ("5 images", "limit is 4")),
    Case("chat: metadata URL", CHAT, chat(image_part("http://169.254.169.254/latest/")), 403,
         ("allow_urls",)),
    Case("chat: 6to4 URL", CHAT, chat(image_part("http://[2002:a9fe:a9fe::1]/")), 403,
         ("allow_urls",)),
    Case("chat: local path", CHAT, chat(image_part("/etc/passwd")), 400,
         ("not an image", "read as base64", "file://")),
    Case("chat: relative path", CHAT, chat(image_part("../../etc/passwd")), 400,
         ("not valid base64", "file://")),
    Case("unsupported OpenAI option", CHAT, chat(logit_bias={"1": 5}), 400, ("logit_bias",)),
    Case("chat: file URL", CHAT, chat(image_part("file:///etc/passwd")), 403, ("local",)),
    Case("chat: gopher URL", CHAT, chat(image_part("gopher://127.0.0.1:6379/_INFO")), 403,
         ("gopher",)),
    Case("chat: lone surrogate in text", CHAT, chat(image_part("<good-url>"),
                                                    text_part("hi " + SURROGATE)), 400,
         ("messages[0].content[1].text", "surrogate")),
    Case("chat: NUL in text", CHAT, chat(image_part("<good-url>"), text_part("a\u0000b")), 200,
         ("choices",)),
    Case("chat: over-long prompt", CHAT, chat(image_part("<good-url>"), text_part("x" * LONG)),
         400, ("131,073 characters", "max_text_tokens")),
    # --- /v1/embeddings ------------------------------------------------------------------
    Case("embeddings without input", EMBED, {"model": "shapes-clip"}, 400, ("input",)),
    Case("embeddings input empty list", EMBED, {"input": []}, 400, ("input",)),
    Case("embeddings input null", EMBED, {"input": None}, 400, ("input",)),
    Case("embeddings empty string", EMBED, {"input": ""}, 400, ("non-empty",)),
    Case("embeddings blank string", EMBED, {"input": [" \t\n"]}, 400, ("non-empty",)),
    Case("embeddings token ids", EMBED, {"input": [1, 2, 3]}, 400, ("token-id",)),
    Case("embeddings booleans", EMBED, {"input": [True]}, 400, ("input 0", "expected a string")),
    Case("embeddings part without text", EMBED, {"input": [{"type": "text"}]}, 400,
         ("input 0", "content part")),
    Case("embeddings 65 inputs", EMBED, {"input": ["a"] * 65}, 400,
         ("65 inputs", "max_inputs_per_request")),
    Case("embeddings unknown modality", EMBED, {"input": "a", "modality": "audio"}, 400,
         ("modality",)),
    Case("embeddings encoding_format hex", EMBED, {"input": "a", "encoding_format": "hex"}, 400,
         ("encoding_format",)),
    Case("embeddings dimensions", EMBED, {"input": "a", "dimensions": 4}, 400, ("dimensions",)),
    Case("embeddings unknown model", EMBED, {"input": "a", "model": "text-embedding-3"}, 404,
         ("text-embedding-3",)),
    Case("embeddings with the chat model", EMBED, {"input": "a", "model": "shapes-vlm"}, 400,
         ("shapes-vlm",)),
    Case("embeddings surrogate text", EMBED, {"input": ["ok", "a" + SURROGATE]}, 400,
         ("input 1", "surrogate")),
    Case("embeddings over-long text", EMBED, {"input": ["ok", "x" * LONG]}, 400,
         ("input 1", "131,073 characters", "max_text_tokens")),
    Case("embeddings non-image as image", EMBED, {"input": ["<text>"], "modality": "image"}, 400,
         ("input 0", "not an image")),
    Case("embeddings bomb as image", EMBED, {"input": ["<bomb>"], "modality": "image"}, 413,
         ("input 0", "pixels")),
    Case("embeddings base64 output", EMBED, {"input": "a\u0000 red circle",
                                             "encoding_format": "base64"}, 200, ("embedding",)),
    # --- /predict ------------------------------------------------------------------------
    Case("predict without image", PREDICT, {"prompt": "what?"}, 400, ("missing image",)),
    Case("predict with an empty prompt", PREDICT, {"prompt": "", "image": "<good>"}, 400,
         ("missing prompt",)),
    Case("predict prompt as a list", PREDICT, {"prompt": ["a"], "image": "<good>"}, 400,
         ("prompt",)),
    Case("predict image not base64", PREDICT, {"prompt": "what?", "image": "not an image!"}, 400,
         ("base64",)),
    Case("predict truncated PNG", PREDICT, {"prompt": "what?", "image": "<truncated>"}, 400,
         ("truncated or damaged",)),
    Case("predict max_tokens 1e308", PREDICT, {"prompt": "what?", "image": "<good>",
                                               "max_tokens": 1e308}, 400, ("max_tokens",)),
    Case("predict over-long prompt", PREDICT, {"prompt": "x" * LONG, "image": "<good>"}, 400,
         ("max_text_tokens",)),
    # --- /classify -----------------------------------------------------------------------
    Case("classify without labels", CLASSIFY, {"image": "<good>"}, 400, ("labels",)),
    Case("classify with no labels", CLASSIFY, classify(labels=[]), 400, ("labels",)),
    Case("classify labels as a string", CLASSIFY, classify(labels="a,b"), 400, ("labels",)),
    Case("classify numeric labels", CLASSIFY, classify(labels=[1, 2]), 400, ("labels",)),
    Case("classify blank label", CLASSIFY, classify(labels=["a", " "]), 400, ("labels[1]",)),
    Case("classify 257 labels", CLASSIFY, classify(labels=[f"l{n}" for n in range(257)]), 400,
         ("257 labels", "max_labels_per_request")),
    Case("classify over-long label", CLASSIFY, classify(labels=["a", "x" * LONG]), 400,
         ("labels[1]", "131,073 characters", "max_text_tokens")),
    Case("classify long labels together", CLASSIFY,
         classify(labels=[f"{n} " + "x" * 700 for n in range(200)]), 400,
         ("the labels' text", "max_text_tokens")),
    Case("classify surrogate label", CLASSIFY, classify(labels=["a" + SURROGATE]), 400,
         ("labels[0]", "surrogate")),
    Case("classify empty image", CLASSIFY, classify(image=""), 400, ("empty",)),
    Case("classify bomb", CLASSIFY, classify(image="<bomb>"), 413, ("pixels",)),
    Case("classify huge but allowed image", CLASSIFY, classify(image="<huge>"), 200, ("scores",)),
    Case("classify duplicate labels", CLASSIFY, classify(labels=["a red circle"] * 3), 200,
         ("scores",)),
    Case("classify image as a number", CLASSIFY, classify(image=12), 400, ("image",)),
    # --- /search -------------------------------------------------------------------------
    Case("search with neither text nor image", SEARCH, {"k": 3}, 400, ("exactly one",)),
    Case("search with both", SEARCH, {"text": "a", "image": "<good>"}, 400, ("exactly one",)),
    Case("search k 0", SEARCH, {"text": "a", "k": 0}, 400, ("k",)),
    Case("search k 1001", SEARCH, {"text": "a", "k": 1001}, 400, ("k", "1000")),
    Case("search k -Infinity", SEARCH, {"text": "a", "k": float("-inf")}, 400, ("k",)),
    Case("search k 2.5", SEARCH, {"text": "a", "k": 2.5}, 400, ("k",)),
    Case("search k 3.0 (a whole number)", SEARCH, {"text": "a red circle", "k": 3.0}, 200,
         ("results",)),
    Case("search k above the index size", SEARCH, {"text": "a red circle", "k": 1000}, 200,
         ("results",)),
    Case("search unknown index", SEARCH, {"text": "a", "index": "nope"}, 404, ("nope",)),
    Case("search over-long text", SEARCH, {"text": "x" * LONG}, 400,
         ("text", "131,073 characters", "max_text_tokens")),
    Case("search corrupt image", SEARCH, {"image": "<truncated>"}, 400, ("truncated or damaged",)),
    # --- open routes ---------------------------------------------------------------------
    Case("the page", "/", method="GET", status=200, words=("<html",)),
    Case("models listed", "/v1/models", method="GET", status=200, words=("shapes-clip",)),
    Case("readyz with a wrong key", "/readyz", method="GET", status=200, words=('"ready"',),
         headers={"Authorization": "Bearer nope"}),
    Case("indexes listed", "/search/indexes", method="GET", status=200, words=("shapes-index",)),
    Case("healthz with a body and a query", "/healthz", method="GET", status=200,
         words=("ok",), params={"x": "\u0000"}),
]


def images() -> dict[str, str]:
    """The image strings the table's placeholders stand for."""
    from PIL import Image

    from raysight.shapes import make_shapes

    good = png_bytes(make_shapes(1, seed=21)[0][0])
    # A 1-bit 8000 x 8000 PNG: a few kB that would decode to 64 million pixels.
    bomb = png_bytes(Image.new("1", (8000, 8000)))
    huge = png_bytes(Image.new("RGB", (6000, 4000), "red"))  # 24 MP: under the 40 MP cap
    raw = {"good": good, "truncated": good[: len(good) // 2], "text": b"hello, not an image\n",
           "bomb": bomb, "huge": huge}
    encoded = {name: base64.b64encode(data).decode() for name, data in raw.items()}
    return {**{f"<{name}>": value for name, value in encoded.items()},
            **{f"<{name}-url>": "data:image/png;base64," + value
               for name, value in encoded.items()}}


def filled(body: Any, values: dict[str, str]) -> Any:
    if isinstance(body, str):
        return values.get(body, body)
    if isinstance(body, list):
        return [filled(item, values) for item in body]
    if isinstance(body, dict):
        return {key: filled(value, values) for key, value in body.items()}
    return body


def send(client: httpx.Client, case: Case, values: dict[str, str]) -> httpx.Response:
    body = case.body
    headers = {**AUTH, **case.headers}
    if body is not None and not isinstance(body, bytes):
        # json.dumps writes a lone surrogate as \ud800 and NaN as NaN, as a hostile client would.
        body = json.dumps(filled(body, values)).encode()
        headers.setdefault("Content-Type", "application/json")
    return client.request(case.method, case.path, content=body, headers=headers,
                          params=case.params or None)


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


def run_corpus(client: httpx.Client, cases: list[Case],
               values: dict[str, str]) -> tuple[list[str], dict[int, int]]:
    """Send each case; what disagrees with its row, and how many answers had each status."""
    problems, tally = [], {}
    for case in cases:
        response = send(client, case, values)
        tally[response.status_code] = tally.get(response.status_code, 0) + 1
        text = response.text
        if response.status_code != case.status:
            problems.append(f"{case.name}: {response.status_code} (expected {case.status}): "
                            f"{text[:300]}")
            continue
        if case.status >= 400:
            if not response.headers.get("content-type", "").startswith("application/json"):
                problems.append(f"{case.name}: not JSON: {text[:200]}")
                continue
            text = error_message(response)
        missing = [word for word in case.words if word not in text]
        if missing:
            problems.append(f"{case.name}: {missing} not in {text[:300]!r}")
    return problems, dict(sorted(tally.items()))
