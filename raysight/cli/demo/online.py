"""The demo's online half: serve both built-in models and the demo's index on Ray Serve, then
ask each route a real HTTP question about a drawn image and check the answer."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path

from raysight.cli.demo.offline import CLIP, VLM, DrawnSet
from raysight.shapes import ALL_CAPTIONS, QUESTIONS

SEARCH_QUERY = "a red circle"
SEARCH_K = 5
INDEX_NAME = "shapes"


@dataclass(frozen=True)
class Exchange:
    """One HTTP request the demo sent, what came back, and what was drawn."""

    route: str
    asked: str
    answer: str
    expected: str
    seconds: float

    @property
    def right(self) -> bool:
        return self.answer == self.expected


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    drawn: str


@dataclass(frozen=True)
class OnlineResult:
    url: str
    startup_seconds: float
    exchanges: list[Exchange]
    hits: list[SearchHit]
    # How many images of the set show the query's shape: the most top-k can get right.
    matches_in_set: int

    @property
    def search_right(self) -> int:
        return sum(hit.drawn == SEARCH_QUERY for hit in self.hits)

    @property
    def search_expected(self) -> int:
        return min(SEARCH_K, self.matches_in_set)


def serve_config(index: Path, port: int):
    from raysight.spec import ModelSpec
    from serve_app.config import IndexConfig, ServeConfig

    return ServeConfig.for_specs(
        [ModelSpec(model=VLM), ModelSpec(model=CLIP)],
        port=port,
        indexes=[IndexConfig(path=str(index), name=INDEX_NAME)],
    )


def base64_of(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def serve_and_ask(drawn: DrawnSet, index: Path, port: int) -> OnlineResult:
    """Start the Serve app (left running: the caller shuts Serve down) and query it."""
    import httpx

    from serve_app.launch import start_serving

    started = time.perf_counter()
    url = start_serving(serve_config(index, port))
    startup = time.perf_counter() - started
    print(f"      serving at {url}; the web page is at {url}/ until the demo shuts down",
          flush=True)
    chat_image, predict_image, classify_image = drawn.images[:3]
    with httpx.Client(base_url=url, timeout=120) as client:
        exchanges = [
            ask_chat(client, chat_image, drawn),
            ask_predict(client, predict_image, drawn),
            ask_classify(client, classify_image, drawn),
        ]
        hits = search(client, drawn)
    matches = sum(caption == SEARCH_QUERY for caption in drawn.captions.values())
    return OnlineResult(url, startup, exchanges, hits, matches)


def _post(client, route: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    response = client.post(route, json=body)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return response.json(), seconds


def ask_chat(client, path: str, drawn: DrawnSet) -> Exchange:
    """OpenAI chat completion, the image inline as a data: URL."""
    question = QUESTIONS["color"]
    body = {
        "model": "shapes-vlm",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64_of(path)}},
            {"type": "text", "text": question},
        ]}],
    }
    reply, seconds = _post(client, "/v1/chat/completions", body)
    answer = reply["choices"][0]["message"]["content"]
    expected = drawn.captions[path].split()[1]  # "a red circle" -> "red"
    return Exchange("/v1/chat/completions", f'{Path(path).name} + "{question}"', answer,
                    expected, seconds)


def ask_predict(client, path: str, drawn: DrawnSet) -> Exchange:
    question = QUESTIONS["shape"]
    reply, seconds = _post(client, "/predict", {"prompt": question, "image": base64_of(path)})
    expected = drawn.captions[path].split()[2]  # "a red circle" -> "circle"
    return Exchange("/predict", f'{Path(path).name} + "{question}"', reply["output"], expected,
                    seconds)


def ask_classify(client, path: str, drawn: DrawnSet) -> Exchange:
    body = {"image": base64_of(path), "labels": list(ALL_CAPTIONS)}
    reply, seconds = _post(client, "/classify", body)
    asked = f"{Path(path).name} over the {len(ALL_CAPTIONS)} captions"
    return Exchange("/classify", asked, reply["label"], drawn.captions[path], seconds)


def search(client, drawn: DrawnSet) -> list[SearchHit]:
    """Text -> image search over the index the embed job built."""
    reply, _ = _post(client, "/search", {"text": SEARCH_QUERY, "k": SEARCH_K})
    return [SearchHit(hit["id"], hit["score"], drawn.captions.get(hit["id"], "?"))
            for hit in reply["results"]]
