"""Requests to the Serve app that tests/integration/test_serve_app.py starts: its API key,
bodies with drawn images, a POST with the key, and raysight's samples in Ray's Prometheus
export."""

from __future__ import annotations

import base64

from tests.conftest import png_bytes

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY = 2 * 1024 * 1024
COLOR_QUESTION = "What color is the shape?"


def b64(image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def data_url(image) -> str:
    return "data:image/png;base64," + b64(image)


def chat_body(image, question: str = COLOR_QUESTION, model: str = "shapes-vlm", **extra) -> dict:
    url = image if isinstance(image, str) else data_url(image)
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def post(url: str, path: str, body: dict | None = None, headers: dict | None = None, **kwargs):
    import requests

    return requests.post(url + path, json=body, headers=AUTH if headers is None else headers,
                         timeout=60, **kwargs)


def read_metrics(port: int) -> list[tuple[str, float]]:
    """raysight's samples in Ray's Prometheus export, as (name{labels}, value)."""
    import requests

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines() if line.startswith("ray_raysight_")]


def total(samples, name: str, *labels: str) -> float:
    return sum(value for key, value in samples
               if key.startswith(name + "{") and all(label in key for label in labels))
