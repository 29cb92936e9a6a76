"""The HTTP API: a FastAPI app over a Gateway, plus the edge every request passes first
(API key, body size cap, metrics, the one JSON error shape).

    POST /v1/chat/completions   OpenAI chat, images as image_url parts; "stream": true for SSE
    POST /v1/embeddings         OpenAI embeddings; images too (see openai_api.py)
    GET  /v1/models             the served models
    POST /predict               {"prompt", "image": base64} -> {"output"}
    POST /classify              {"image", "labels"} -> label probabilities
    POST /search                {"text" | "image", "k"} -> nearest ids in a vector index
    GET  /healthz, /readyz      liveness, and readiness (every model answers); no API key
    GET  /, /ui/..., /search/indexes, /search/image   the web page (page.py)
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from raysight.errors import (InvalidRequest, Overloaded, RaysightError, RequestTooLarge,
                             Unauthorized)
from serve_app.gateway import Gateway, Reply
from serve_app.metrics import IngressMetrics
from serve_app.openai_api import (ChatCompletionRequest, ClassifyRequest, EmbeddingsRequest,
                                  PredictRequest, SearchRequest, error_body, parse)
from serve_app.page import DATA_PATHS, PAGE_PATHS, add_page_routes

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | PAGE_PATHS
ROUTES = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/predict",
                    "/classify", "/search"}) | OPEN_PATHS | DATA_PATHS
BATCH_SIZE_HEADER = "X-Raysight-Batch-Size"


class RouteRefused(RaysightError):
    """Starlette's own refusals (unknown path, wrong method), in the one error shape."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code
        self.code = "not_found" if status_code == 404 else "invalid_request"


def error_response(path: str, exc: BaseException) -> JSONResponse:
    """The error shape for `path`: flat for /predict's contract, OpenAI's everywhere else."""
    status = exc.status_code if isinstance(exc, RaysightError) else 500
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(getattr(exc, "retry_after_s", 1))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc, flat=path == "/predict"), status, headers=headers)


class HttpEdge:
    """ASGI middleware: API key, body size cap, request metrics, and a JSON 500 for bugs."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: IngressMetrics):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        started_at = time.perf_counter()
        response = {"status": 500, "started": False}

        async def tracked_send(message) -> None:
            if message["type"] == "http.response.start":
                response.update(status=message["status"], started=True)
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(path, refusal)(scope, receive, tracked_send)
                return
            await self.app(scope, self._capped(receive), tracked_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: answer, log
            if not isinstance(exc, RaysightError):
                logger.exception("unhandled error on %s", path)
            if not response["started"]:
                await error_response(path, exc)(scope, receive, tracked_send)
        finally:
            route = path if path in ROUTES else "other"
            self.metrics.record(route, response["status"], time.perf_counter() - started_at)

    def _refusal(self, scope) -> RaysightError | None:
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
                return Unauthorized(
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
                )
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return None

    def _too_large(self, size: int | None = None) -> RequestTooLarge:
        seen = f"{size:,} bytes" if size is not None else "larger than that"
        return RequestTooLarge(
            f"the request body is {seen}; the limit is {self.max_body_bytes:,} bytes "
            "(max_body_bytes)"
        )

    def _capped(self, receive):
        """Count body bytes as they arrive (a chunked upload has no Content-Length)."""
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return capped_receive


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def reply(result: Reply) -> JSONResponse:
    headers = {BATCH_SIZE_HEADER: str(result.batch_size)} if result.batch_size else None
    return JSONResponse(result.body, headers=headers)


def build_http_api(gateway: Gateway, metrics: IngressMetrics | None = None) -> FastAPI:
    """The FastAPI app serving `gateway` under the limits of its ServeConfig."""
    config = gateway.config
    app = FastAPI(title="raysight", version="0.1.0", docs_url=None, redoc_url=None)
    app.add_middleware(HttpEdge, api_key=config.resolved_api_key(),
                       max_body_bytes=config.max_body_bytes,
                       metrics=metrics or IngressMetrics())

    @app.exception_handler(RaysightError)
    async def _raysight_error(request: Request, exc: RaysightError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        refused = RouteRefused(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)
        return error_response(request.url.path, refused)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse(ChatCompletionRequest, await read_json(request))
        if body.stream:
            events = await gateway.chat_stream(body)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return reply(await gateway.chat(body))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return reply(await gateway.embeddings(parse(EmbeddingsRequest, await read_json(request))))

    @app.get("/v1/models")
    async def models():
        return await gateway.list_models()

    @app.post("/predict")
    async def predict(request: Request):
        return reply(await gateway.predict(parse(PredictRequest, await read_json(request))))

    @app.post("/classify")
    async def classify(request: Request):
        return reply(await gateway.classify(parse(ClassifyRequest, await read_json(request))))

    @app.post("/search")
    async def search(request: Request):
        return reply(await gateway.search(parse(SearchRequest, await read_json(request))))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        ready, models = await gateway.readiness()
        return JSONResponse({"status": "ready" if ready else "not ready", "models": models},
                            200 if ready else 503)

    add_page_routes(app, gateway)
    return app
