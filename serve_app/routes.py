"""The HTTP API: a FastAPI app over a Gateway, plus the edge every request passes first
(API key, body size cap, metrics, the one JSON error shape).

    POST /v1/chat/completions   OpenAI chat, images as image_url parts; "stream": true for SSE
    POST /v1/embeddings         OpenAI embeddings; images too (see openai_api.py)
    GET  /v1/models             the served models
    POST /predict               {"prompt", "image": base64} -> {"output"}
    POST /classify              {"image", "labels"} -> label probabilities
    POST /search                {"text" | "image", "k"} -> nearest ids in a vector index
    GET  /healthz, /readyz      liveness, and readiness (every model answers); no API key;
                                HEAD on both answers the same status without a body
    GET  /, /ui/..., /search/indexes, /search/image   the web page (page.py)
    GET  /openapi.json, /docs, /redoc   the API described (docs_pages.py); no API key

Routes parse their bodies themselves (`parse(Model, await read_json(request))`): letting
FastAPI parse a declared body cost 2-8% more CPU per request (bench/body_parse.py). Each route
names its request model in the schema instead (api_schema.request_body), with its answers and
errors; tests/unit/test_openapi.py checks that the schema and the parsing agree.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from raysight.errors import (InvalidRequest, Overloaded, RaysightError, RequestTooLarge,
                             Unauthorized, internal_error)
from serve_app.api_schema import (MODEL_ROUTE, ChatCompletion, ClassifyReply, Embeddings, Health,
                                  ModelList, PredictReply, Readiness, SearchReply,
                                  configure_schema, request_body, responses)
from serve_app.docs_pages import add_docs_pages, is_docs_path
from serve_app.gateway import AdmissionPool, Gateway, ModelOverloaded, Reply
from serve_app.metrics import IngressMetrics
from serve_app.openai_api import (ChatCompletionRequest, ClassifyRequest, EmbeddingsRequest,
                                  PredictRequest, SearchRequest, error_body, parse)
from serve_app.page import DATA_PATHS, PAGE_PATHS, add_page_routes
from serve_app.proxy_edge import ADMISSION_HEADER, admission_header

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | PAGE_PATHS
ROUTES = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/predict",
                    "/classify", "/search"}) | OPEN_PATHS | DATA_PATHS
BATCH_SIZE_HEADER = "X-Raysight-Batch-Size"
SERVER_TIMING_HEADER = "Server-Timing"
# The deepest nesting of JSON arrays and objects a body may have. Every request shape is 6
# deep at most; a far deeper one only exhausts the parser's (or pickle's) recursion.
MAX_JSON_DEPTH = 64


class RouteRefused(RaysightError):
    """Starlette's own refusals (unknown path, wrong method), in the one error shape."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code
        self.code = "not_found" if status_code == 404 else "invalid_request"


def error_response(path: str, exc: BaseException,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error shape for `path`: flat for /predict's contract, OpenAI's everywhere else."""
    status = exc.status_code if isinstance(exc, RaysightError) else 500
    headers = dict(headers or {})
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(getattr(exc, "retry_after_s", 1))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc, flat=path == "/predict"), status, headers=headers)


class HttpEdge:
    """ASGI middleware: API key, body size cap, admission (a 503 before the body is read when
    the route's models are full), request metrics, and a JSON 500 for bugs (an InternalError
    whose id is logged with the traceback). Every answer on a model route tells Serve's proxy
    the route's pool of models (proxy_edge.ADMISSION_HEADER), so that the proxy refuses what
    would overfill it without passing it here."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: IngressMetrics,
                 is_open: Callable[[str], bool] = OPEN_PATHS.__contains__,
                 admit: Callable[[str], RaysightError | None] = lambda path: None,
                 pool: Callable[[str], AdmissionPool | None] = lambda path: None):
        self.app = app
        self.admit = admit
        self.pool = pool
        self._pool_headers: dict[str, tuple[AdmissionPool, bytes]] = {}
        self.api_key = api_key.encode() if api_key else None
        self.is_open = is_open
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
                told = self._pool_header(path)
                if told is not None:
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (ADMISSION_HEADER, told)]}
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(path, refusal)(scope, receive, tracked_send)
                return
            await self.app(scope, self._capped(receive), tracked_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: answer, log
            if not isinstance(exc, RaysightError):
                exc = internal_error(logger, f"unhandled error on {path}", exc)
            if not response["started"]:
                await error_response(path, exc)(scope, receive, tracked_send)
        finally:
            route = path if path in ROUTES else "other"
            self.metrics.record(route, response["status"], time.perf_counter() - started_at)

    def _refusal(self, scope) -> RaysightError | None:
        headers = dict(scope["headers"])
        if self.api_key and not self.is_open(scope["path"]):
            given = headers.get(b"authorization", b"")
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
                return Unauthorized(
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
                )
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return self.admit(scope["path"])  # a full model: 503 before the body is read

    def _pool_header(self, path: str) -> bytes | None:
        """ADMISSION_HEADER's value for `path` (rendered once per pool), or None."""
        pool = self.pool(path)
        if pool is None:
            return None
        cached = self._pool_headers.get(path)
        if cached is None or cached[0] != pool:
            names = ", ".join(repr(name) for name in pool.models)
            refusal = ModelOverloaded(
                f"model{'s' * (len(pool.models) > 1)} {names} "
                f"{'are' if len(pool.models) > 1 else 'is'} at capacity ({pool.limit} requests "
                f"in progress or queued); retry after {pool.retry_after_s}s",
                pool.retry_after_s)
            value = admission_header(pool.key, pool.limit, pool.retry_after_s,
                                     error_body(refusal, flat=path == "/predict"))
            cached = self._pool_headers[path] = (pool, value)
        return cached[1]

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
    too_deep = InvalidRequest(
        f"the request body nests JSON arrays and objects more than {MAX_JSON_DEPTH} levels "
        f"deep; the limit is {MAX_JSON_DEPTH}"
    )
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of levels: the parser gave up first
        raise too_deep from None
    except ValueError:  # an integer longer than Python converts (a guard against slow parses)
        digits = sys.get_int_max_str_digits()
        raise InvalidRequest(f"the request body holds an integer of more than {digits:,} "
                             f"digits; the limit is {digits:,} digits") from None
    # Counting brackets is a C-speed pass; only a body with enough of them can be too deep.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and not _within_depth(data):
        raise too_deep
    return data


def _within_depth(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `data` nests lists and dicts at most `limit` deep; walked without recursion,
    stopping at the first container past the limit."""
    stack = [(data, 1)] if isinstance(data, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def reply(result: Reply) -> JSONResponse:
    headers = {BATCH_SIZE_HEADER: str(result.batch_size),
               SERVER_TIMING_HEADER: server_timing(result)} if result.batch_size else None
    return JSONResponse(result.body, headers=headers)


def server_timing(result: Reply) -> str:
    """The W3C Server-Timing value of a model's answer (browsers' developer tools show it):
    how long the request waited for its batch (`queue`) and how long that batch ran on the
    model (`model`), in milliseconds. The rest of what a client measures is the HTTP edge,
    preprocessing and the network."""
    return (f"queue;dur={1000 * result.queue_wait_s:.1f};desc=\"waiting for a batch\", "
            f"model;dur={1000 * result.model_s:.1f};desc=\"the batch on the model\"")


def build_http_api(gateway: Gateway, metrics: IngressMetrics | None = None) -> FastAPI:
    """The FastAPI app serving `gateway` under the limits of its ServeConfig."""
    config = gateway.config
    api_key = config.resolved_api_key()
    app = FastAPI(title="raysight", version="0.1.0", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if config.docs else None)

    def is_open(path: str) -> bool:
        return path in OPEN_PATHS or config.docs and (path == app.openapi_url
                                                      or is_docs_path(path))

    app.add_middleware(HttpEdge, api_key=api_key, max_body_bytes=config.max_body_bytes,
                       metrics=metrics or IngressMetrics(), is_open=is_open,
                       admit=gateway.refusal, pool=gateway.admission_pool)
    if config.docs:
        add_docs_pages(app)
        generate_schema = app.openapi

        def described() -> dict:
            if app.openapi_schema is None:
                paths = frozenset(path for path in ROUTES | {app.openapi_url} if is_open(path))
                configure_schema(generate_schema(), config, paths, keyed=bool(api_key))
            return app.openapi_schema

        app.openapi = described

    @app.exception_handler(RaysightError)
    async def _raysight_error(request: Request, exc: RaysightError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Parameters FastAPI checks itself (query strings): a 400 in the one error shape, not
        # FastAPI's 422, worded as parse() words a bad body.
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                             for error in exc.errors())
        return error_response(request.url.path, InvalidRequest(f"invalid request: {problems}"))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        refused = RouteRefused(f"{request.method} {request.url.path}: {exc.detail}",
                               exc.status_code)
        # Keeps Starlette's headers: a 405 says which methods the path allows (Allow).
        return error_response(request.url.path, refused, exc.headers)

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest),
              responses=responses(ChatCompletion, *MODEL_ROUTE, stream=True))
    async def chat_completions(request: Request):
        """OpenAI chat completions; images as image_url content parts."""
        body = parse(ChatCompletionRequest, await read_json(request))
        if body.stream:
            events = await gateway.chat_stream(body)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return reply(await gateway.chat(body))

    @app.post("/v1/embeddings", openapi_extra=request_body(EmbeddingsRequest),
              responses=responses(Embeddings, *MODEL_ROUTE))
    async def embeddings(request: Request):
        """OpenAI embeddings of texts and images; one L2-normalised vector per input."""
        return reply(await gateway.embeddings(parse(EmbeddingsRequest, await read_json(request))))

    @app.get("/v1/models", responses=responses(ModelList, 401, 500))
    async def models():
        """The served models."""
        return await gateway.list_models()

    @app.post("/predict", openapi_extra=request_body(PredictRequest),
              responses=responses(PredictReply, *MODEL_ROUTE, flat=True))
    async def predict(request: Request):
        """{"prompt", "image": base64} -> {"output"}; errors are {"error": message}."""
        return reply(await gateway.predict(parse(PredictRequest, await read_json(request))))

    @app.post("/classify", openapi_extra=request_body(ClassifyRequest),
              responses=responses(ClassifyReply, *MODEL_ROUTE))
    async def classify(request: Request):
        """Zero-shot: each label's probability for one image, highest first."""
        return reply(await gateway.classify(parse(ClassifyRequest, await read_json(request))))

    @app.post("/search", openapi_extra=request_body(SearchRequest),
              responses=responses(SearchReply, *MODEL_ROUTE))
    async def search(request: Request):
        """The k nearest items of a vector index to a text or an image."""
        return reply(await gateway.search(parse(SearchRequest, await read_json(request))))

    @app.get("/healthz", responses={200: {"model": Health}})
    async def healthz():
        """The HTTP server is up (no API key)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={200: {"model": Readiness}, 503: {
        "model": Readiness, "description": "Some model does not answer."}})
    async def readyz():
        """200 when every model answers, 503 otherwise (no API key)."""
        ready, models = await gateway.readiness()
        return JSONResponse({"status": "ready" if ready else "not ready", "models": models},
                            200 if ready else 503)

    # Load balancers and uptime checkers often probe with HEAD: the same status, no body.
    @app.head("/healthz", include_in_schema=False)
    async def healthz_head():
        return Response(status_code=200)

    @app.head("/readyz", include_in_schema=False)
    async def readyz_head():
        ready, _ = await gateway.readiness()
        return Response(status_code=200 if ready else 503)

    add_page_routes(app, gateway)
    return app
