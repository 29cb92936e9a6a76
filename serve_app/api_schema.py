"""What /openapi.json says: each route's request model (the routes parse bodies themselves,
so FastAPI is told the model here), its answers (documented only; the routes build them as
plain JSON), the errors it may give in the one error shape, the API key as a bearer scheme,
and the limits this server was configured with.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from serve_app.config import ServeConfig

# --- answers ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str = Field(description="'stop' (the model ended) or 'length' (max_tokens).")


class ChatCompletion(BaseModel):
    """A chat answer. With "stream": true the answer is text/event-stream instead: one
    `data: {chat.completion.chunk}` event per token, then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="The L2-normalised vector; a base64 string of little-endian float32 "
                    "with encoding_format 'base64'.")


class EmbedUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embeddings(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbedUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="Where the model comes from (a hub id, folder or builtin:).")
    task: Literal["generate", "embed"] | None = Field(
        None, description="Absent while the model is still loading.")
    max_batch_size: int | None = Field(
        None, description="Most items one forward takes (absent while loading); with "
        "`max_batch_size: auto`, the size the start-up sweep picked.")
    max_batch_size_auto: dict[str, Any] | None = Field(
        None, description="With `max_batch_size: auto`: how the size was picked (size, "
        "from_cache, device, items/s per swept size, seconds, why the sweep stopped).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class PredictReply(BaseModel):
    output: str


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyReply(BaseModel):
    model: str
    label: str = Field(description="The most probable label.")
    scores: list[LabelScore] = Field(description="Every label's probability, highest first.")


class Hit(BaseModel):
    id: str
    score: float


class SearchReply(BaseModel):
    index: str
    model: str
    results: list[Hit]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    models: dict[str, Literal["ready", "busy", "not ready"]]


# --- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and how to fix it.")
    type: Literal["invalid_request_error", "server_error"]
    code: str = Field(description="e.g. invalid_request, invalid_image, model_not_found, "
                                  "unauthorized, request_too_large, overloaded.")


class Error(BaseModel):
    """raysight's one JSON error shape (OpenAI's)."""

    error: ErrorDetail


class FlatError(BaseModel):
    """/predict's error shape, as its Flask contract has it."""

    error: str = Field(description="What went wrong and how to fix it.")


ERRORS = {
    400: "The request is malformed or asks for something this server does not support.",
    401: "The API key is missing or wrong (only when the server has one).",
    403: "An image source is not allowed (a local path or a URL the model refuses).",
    404: "No such model or index.",
    413: "The body is over max_body_bytes, or an image over the model's size limits.",
    422: "An allowed image URL could not be fetched.",
    500: "A bug; the details are in the server's log.",
    503: "The model's queue is full or it is not available; retry after Retry-After seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer"}}}
SSE = {"text/event-stream": {"schema": {"type": "string", "description": (
    "Server-sent events: 'data: {chat.completion.chunk}' per token, then 'data: [DONE]'.")}}}


def responses(answer: type[BaseModel], *statuses: int, flat: bool = False,
              stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for a route: its answer and the errors it may give."""
    table: dict[int | str, dict[str, Any]] = {200: {"model": answer}}
    if stream:
        table[200]["content"] = SSE
    for status in statuses:
        table[status] = {"model": FlatError if flat else Error, "description": ERRORS[status]}
        if status == 503:
            table[status]["headers"] = RETRY_AFTER
    return table


def _error_answer(status: int) -> dict[str, Any]:
    return {"description": ERRORS[status], "content": {"application/json": {
        "schema": {"$ref": REF.format(model="Error")}}}}


MODEL_ROUTE = (400, 401, 403, 404, 413, 422, 500, 503)
# The task of the models each request may name.
MODEL_TASKS = {"ChatCompletionRequest": "generate", "PredictRequest": "generate",
               "EmbeddingsRequest": "embed", "ClassifyRequest": "embed", "SearchRequest": "embed"}


# --- requests ----------------------------------------------------------------------------------

REF = "#/components/schemas/{model}"
# Request models named by routes with request_body(), put in the schema's components.
REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra`: its JSON body is `model` (the route parses it itself)."""
    REQUEST_MODELS[model.__name__] = model
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=model.__name__)}}}}}


def _add_request_models(components: dict[str, Any]) -> None:
    _, found = models_json_schema([(model, "validation") for model in REQUEST_MODELS.values()],
                                  ref_template=REF)
    components.setdefault("schemas", {}).update(found.get("$defs", {}))


# --- the configured server -------------------------------------------------------------------


def configure_schema(schema: dict[str, Any], config: ServeConfig, open_paths: frozenset[str],
                     keyed: bool) -> dict[str, Any]:
    """Fill `schema` (FastAPI's) with what this server was configured with: the bearer key
    on every route but the open ones, and the request limits it enforces."""
    components = schema.setdefault("components", {})
    _add_request_models(components)
    if keyed:
        components.setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "The server's API key: 'Authorization: Bearer <key>'."}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            # FastAPI's default 422 for query parameters: raysight answers those 400 (routes.py).
            default = answers.get("422", {}).get("content", {}).get("application/json", {})
            if default.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del answers["422"]
                answers.setdefault("400", _error_answer(400))
            if keyed and path not in open_paths:
                operation["security"] = [{"apiKey": []}]
                answers.setdefault("401", _error_answer(401))
            else:  # no key asked for here: a 401 never comes
                answers.pop("401", None)
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    limit = max((served.spec.generation.max_new_tokens_limit for served in config.models
                 if served.spec.task != "embed"), default=None)
    for name in ("ChatCompletionRequest", "PredictRequest"):
        for field in ("max_tokens", "max_completion_tokens"):
            found = schemas.get(name, {}).get("properties", {}).get(field)
            if found and limit:
                found["anyOf"][0]["maximum"] = limit
                found["description"] += f" At most {limit} (generation.max_new_tokens_limit)."
    tasks = {served.name: served.spec.task for served in config.models}
    if None not in tasks.values():  # every model's task is known before it loads: list them
        for name, task in MODEL_TASKS.items():
            field = schemas.get(name, {}).get("properties", {}).get("model")
            if field:
                field["anyOf"][0]["enum"] = [model for model, kind in tasks.items() if kind == task]
    search = schemas.get("SearchRequest", {}).get("properties", {}).get("index")
    if search:
        search["anyOf"][0]["enum"] = [index.index_name for index in config.indexes]
    embed_input = schemas.get("EmbeddingsRequest", {}).get("properties", {}).get("input")
    if embed_input:
        embed_input["anyOf"][1]["maxItems"] = config.max_inputs_per_request
    return schema
