"""``python -m bench.body_parse``: does letting FastAPI parse a declared body cost speed?

Two FastAPI apps answer the same route with a constant reply: one reads the raw request and
validates it itself (``json.loads`` then ``Model.model_validate``, how raysight's routes parsed
before they declared their models),
the other declares the pydantic model as the body parameter and lets FastAPI parse it. Both
are driven in-process through httpx's ASGITransport (no sockets, no model), for a typical chat
body (one 224 px PNG as a data URL and a question) and a typical embeddings body (8 texts),
median of 41 alternating rounds of 60 requests, in CPU time. Prints requests per CPU-second and
CPU microseconds per request for each.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import time

from fastapi import FastAPI, Request

from serve_app.openai_api import ChatCompletionRequest, EmbeddingsRequest

ROUNDS = 41
REQUESTS_PER_ROUND = 60


def bodies() -> dict[str, tuple[str, type, bytes]]:
    from raysight.shapes import make_shapes

    image, _ = make_shapes(1, seed=3)[0]
    buffer = io.BytesIO()
    image.resize((224, 224)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    chat = {"model": "shapes-vlm", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What color is the shape?"}]}]}
    embeddings = {"model": "shapes-clip",
                  "input": [f"a photo of shape number {n}" for n in range(8)]}
    return {
        "chat": ("/v1/chat/completions", ChatCompletionRequest, json.dumps(chat).encode()),
        "embeddings": ("/v1/embeddings", EmbeddingsRequest, json.dumps(embeddings).encode()),
    }


def manual_app(path: str, model: type) -> FastAPI:
    app = FastAPI()

    @app.post(path)
    async def route(request: Request):
        model.model_validate(json.loads(await request.body()))
        return {"ok": True}

    return app


def declared_app(path: str, model: type) -> FastAPI:
    app = FastAPI()

    async def route(body):  # the annotation is set below: `model` is a variable here
        return {"ok": True}

    route.__annotations__ = {"body": model}
    app.post(path)(route)
    return app


async def rates(apps: dict[str, FastAPI], path: str, body: bytes) -> dict[str, float]:
    """Median requests/s of each app; rounds alternate between the apps so that load from
    other processes on a shared machine falls on both alike."""
    import httpx

    headers = {"Content-Type": "application/json"}
    clients = {name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://bench") for name, app in apps.items()}
    seen: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, client in clients.items():
            # CPU time of this process, not wall time: on a machine shared with other work,
            # waiting for a core is noise; the CPU a request costs is what is compared.
            started = time.process_time()
            for _ in range(REQUESTS_PER_ROUND):
                response = await client.post(path, content=body, headers=headers)
                assert response.status_code == 200, response.text
            seen[name].append(REQUESTS_PER_ROUND / (time.process_time() - started))
    for client in clients.values():
        await client.aclose()
    return {name: statistics.median(values) for name, values in seen.items()}


def main() -> None:
    for name, (path, model, body) in bodies().items():
        apps = {"manual": manual_app(path, model), "declared": declared_app(path, model)}
        measured = asyncio.run(rates(apps, path, body))
        manual, declared = measured["manual"], measured["declared"]
        print(f"{name} ({len(body):,} B body): manual parse {manual:,.0f} req/CPU-s "
              f"({1e6 / manual:.0f} µs each), declared body {declared:,.0f} req/CPU-s "
              f"({1e6 / declared:.0f} µs each): {declared / manual - 1:+.1%}")


if __name__ == "__main__":
    main()
