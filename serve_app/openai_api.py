"""Request and response shapes of the HTTP API: OpenAI's chat completions and embeddings,
and raysight's /predict, /classify and /search.

Requests are validated here into the shared core's request objects (GenerateRequest,
EmbedRequest); images stay as the strings clients sent and are decoded in the model replica,
so the ingress never spends CPU on pixels.

Image input for /v1/embeddings follows the two conventions OpenAI-compatible servers use:
  * Infinity: ``{"input": ["data:image/png;base64,...", ...], "modality": "image"}`` - every
    input is an image reference (data URL, plain base64, or an http(s) URL when the model's
    ``images.allow_urls`` is on);
  * content parts, as in chat messages: ``{"input": [{"type": "image_url", "image_url":
    {"url": "data:image/png;base64,..."}}, {"type": "text", "text": "a red circle"}]}`` - one
    vector per part, so texts and images mix in one request.
Plain ``{"input": "text"}`` / ``{"input": ["t1", "t2"]}`` embeds text, as OpenAI does.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest, GenerateResult
from raysight.errors import InvalidRequest
from raysight.sampling import GREEDY_BELOW, NewTokens, Temperature, TopP

# The JSON schema format of an image reference: base64, a data: URL, or an http(s) URL where
# the model allows URLs. Schema-driven testers are told how to draw valid ones (tests/).
IMAGE_FORMAT = "image-ref"
IMAGE = {"type": "string", "minLength": 1, "format": IMAGE_FORMAT,
         "description": "An image: base64 of the file, a data: URL, or an http(s) URL when the "
                        "model's images.allow_urls is on."}
# A text the embed model encodes: at least one character that is not whitespace, as Python's
# str.strip() has it (regex engines disagree on \s, so the class is spelled out).
_SPACE = (r"\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a"
          r"\u2028\u2029\u202f\u205f\u3000")
NONBLANK = {"type": "string", "pattern": f"[^{_SPACE}]"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do; the known ones that
    # raysight cannot honour are refused by `unsupported_options`. Strict: a number sent as
    # a string is refused, as the published schema says, not silently converted.
    model_config = ConfigDict(extra="ignore", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        # JSON has one number type: 16.0 is the integer 16, as JSON Schema's "integer" says.
        return int(value) if isinstance(value, float) and value.is_integer() else value


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate a JSON body, turning pydantic's report into one readable 400."""
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidRequest(f"invalid request: {problems}") from None


# --- chat completions ------------------------------------------------------------------------


_TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"const": "text"}, "text": {"type": "string"}}}
_IMAGE_URL_PART = {"type": "object", "required": ["type", "image_url"], "properties": {
    "type": {"const": "image_url"},
    "image_url": {"anyOf": [IMAGE, {"type": "object", "required": ["url"], "properties": {
        "url": IMAGE, "detail": {"description": "Accepted and ignored."}}}]}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image"], "properties": {
    "type": {"const": "image"}, "image": IMAGE}}
_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "user", "assistant"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
        "anyOf": [_TEXT_PART, _IMAGE_URL_PART, _IMAGE_PART]}}]}}}
_MESSAGES = {
    "type": "array", "minItems": 1, "items": _MESSAGE,
    "description": "The chat, OpenAI's way. Images go in user messages as image_url parts; "
                   "the last message is the user's; at most images.max_images_per_request "
                   "images in all.",
}


def _only(schema: dict[str, Any], why: str) -> Any:
    """The schema of an OpenAI option raysight accepts only at its neutral value."""
    return WithJsonSchema({**nullable(schema), "description": why})


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    """OpenAI's chat completion request; images as image_url content parts."""

    model: str | None = Field(None, min_length=1,
                              description="A served model; the first generate model if unset.")
    # Checked by raysight.chat when the model prepares the chat: its messages say what is
    # wrong (role, part type, image) better than a schema error would.
    messages: Annotated[list[Any], WithJsonSchema(_MESSAGES)] = Field(min_length=1)
    # Ranges from raysight.sampling, the one place the engine checks them too.
    max_tokens: NewTokens | None = Field(None, description="Most new tokens (the model's "
                                         "generation.max_new_tokens if unset).")
    max_completion_tokens: NewTokens | None = Field(None, description="Same as max_tokens; "
                                                    "wins when both are given.")
    temperature: Temperature | None = Field(None, description="0 is greedy decoding, as is "
                                            f"any temperature below {GREEDY_BELOW:g}.")
    top_p: TopP | None = None
    stream: bool = Field(False, description="Answer with server-sent events, one "
                         "chat.completion.chunk per token, ending with 'data: [DONE]'.")
    stream_options: StreamOptions | None = None
    # Known options raysight cannot honour; refused unless left at their defaults.
    n: Annotated[int | None, _only({"const": 1}, "Only 1 is supported.")] = None
    stop: Annotated[str | list[str] | None, _only(
        {"anyOf": [{"const": ""}, {"type": "array", "items": {"type": "string"}, "maxItems": 0}]},
        "Stop sequences are not supported.")] = None
    logprobs: Annotated[bool | None, _only({"const": False}, "Not supported.")] = None
    top_logprobs: Annotated[int | None, _only({"const": 0}, "Not supported.")] = None
    presence_penalty: Annotated[float | None, _only({"const": 0}, "Not supported.")] = None
    frequency_penalty: Annotated[float | None, _only({"const": 0}, "Not supported.")] = None
    logit_bias: Annotated[dict[str, Any] | None, _only(
        {"type": "object", "maxProperties": 0}, "Not supported.")] = None
    tools: Annotated[list[Any] | None, _only(
        {"type": "array", "maxItems": 0}, "Tools are not supported.")] = None
    functions: Annotated[list[Any] | None, _only(
        {"type": "array", "maxItems": 0}, "Functions are not supported.")] = None
    response_format: Annotated[dict[str, Any] | None, _only(
        {"type": "object", "properties": {"type": {"const": "text"}}},
        "Only plain text answers ({\"type\": \"text\"}).")] = None

    def unsupported_options(self) -> list[str]:
        problems = []
        if self.n not in (None, 1):
            problems.append(f"n={self.n} (only n=1 is supported; send separate requests)")
        if self.stop:
            problems.append("stop sequences")
        if self.logprobs or self.top_logprobs:
            problems.append("logprobs")
        if self.presence_penalty or self.frequency_penalty:
            problems.append("presence/frequency penalties")
        if self.logit_bias:
            problems.append("logit_bias")
        if self.tools or self.functions:
            problems.append("tools/functions")
        if self.response_format and self.response_format.get("type", "text") != "text":
            problems.append(f"response_format {self.response_format.get('type')!r}")
        return problems

    def to_generate_request(self) -> GenerateRequest:
        problems = self.unsupported_options()
        if problems:
            raise InvalidRequest(f"unsupported option(s): {', '.join(problems)}")
        return GenerateRequest(
            messages=self.messages,
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
        )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result: GenerateResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def chat_completion(result: GenerateResult, model: str) -> dict[str, Any]:
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
        }],
        "usage": usage(result),
    }


class ChunkWriter:
    """Server-sent events in OpenAI's ``chat.completion.chunk`` format for one completion."""

    def __init__(self, model: str):
        self.model = model
        self.id = completion_id()
        self.created = int(time.time())

    def _chunk(self, choices: list[dict], **extra: Any) -> str:
        import json

        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def role(self) -> str:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}])

    def text(self, piece: str) -> str:
        return self._chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])

    def finish(self, reason: str, batch_size: int = 0) -> str:
        # A stream's headers go out before its batch is known, so the batch size that
        # X-Raysight-Batch-Size carries elsewhere rides on the last chunk instead.
        extra = {"raysight": {"batch_size": batch_size}} if batch_size else {}
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}], **extra)

    def usage(self, result: GenerateResult) -> str:
        return self._chunk([], usage=usage(result))

    @staticmethod
    def error(body: dict) -> str:
        import json

        return f"data: {json.dumps(body)}\n\n"

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"


# --- embeddings --------------------------------------------------------------------------------


_EMBED_TEXT_PART = {**_TEXT_PART, "properties": {"type": {"const": "text"}, "text": NONBLANK}}
_EMBED_INPUT = {
    "anyOf": [NONBLANK, {"type": "array", "minItems": 1, "items": {
        "anyOf": [NONBLANK, _EMBED_TEXT_PART, _IMAGE_URL_PART]}}],
    "description": "A text, or a list of texts, image references (with \"modality\": "
                   "\"image\") or content parts (texts and images mixed); one vector each.",
}


class EmbeddingsRequest(_Body):
    """OpenAI's embeddings request; images as content parts or with modality "image"."""

    # With "modality": "image", the strings in input are image references.
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["modality"], "properties": {"modality": {"const": "image"}}},
        "then": {"properties": {"input": {"anyOf": [IMAGE, {"type": "array", "items": {
            "anyOf": [IMAGE, _EMBED_TEXT_PART, _IMAGE_URL_PART]}}]}}},
    })

    model: str | None = Field(None, min_length=1,
                              description="A served model; the first embed model if unset.")
    input: Annotated[str | list[Any], WithJsonSchema(_EMBED_INPUT)]
    modality: Literal["text", "image"] = Field("text", description="\"image\": every string "
                                               "in input is an image reference.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes.")
    dimensions: Annotated[int | None, WithJsonSchema(
        {"type": "null", "description": "Not supported: vectors have the model's own size."}
    )] = None

    def to_embed_requests(self, max_inputs: int) -> list[EmbedRequest]:
        if self.dimensions is not None:
            raise InvalidRequest("dimensions is not supported: vectors have the model's own size")
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise InvalidRequest("input must not be empty")
        if len(items) > max_inputs:
            raise InvalidRequest(
                f"{len(items)} inputs in one request; the limit is {max_inputs} "
                "(max_inputs_per_request); split the request"
            )
        return [self._one(item, position) for position, item in enumerate(items)]

    def _one(self, item: Any, position: int) -> EmbedRequest:
        if isinstance(item, str):
            return EmbedRequest(image=item) if self.modality == "image" else EmbedRequest(text=item)
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            return EmbedRequest(text=item["text"])
        if isinstance(item, dict) and item.get("type") == "image_url":
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url:
                return EmbedRequest(image=url)
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise InvalidRequest("token-id inputs are not supported; send text or images")
        raise InvalidRequest(
            f"input {position}: expected a string or a content part "
            '{"type": "text", "text": ...} / {"type": "image_url", "image_url": {"url": ...}}'
        )


def embedding_data(index: int, vector, encoding_format: str) -> dict[str, Any]:
    import numpy as np

    values = np.asarray(vector, dtype="<f4")
    embedding: Any = (
        base64.b64encode(values.tobytes()).decode("ascii")
        if encoding_format == "base64" else values.tolist()
    )
    return {"object": "embedding", "index": index, "embedding": embedding}


# --- raysight's own routes -----------------------------------------------------------------------


class PredictRequest(_Body):
    """The contract of the widely copied Flask VLM server: both fields are required."""

    # Optional here so that a missing field gets the contract's own message (see below);
    # required in the published schema.
    prompt: Annotated[str | None, WithJsonSchema({"type": "string", "minLength": 1})] = Field(
        None, description="The question or instruction.")
    image: Annotated[str | None, WithJsonSchema(IMAGE)] = None
    model: str | None = Field(None, min_length=1,
                              description="A served model; the first generate model if unset.")
    max_tokens: NewTokens | None = Field(None, description="Most new tokens.")
    model_config = ConfigDict(json_schema_extra={"required": ["prompt", "image"]})

    def to_generate_request(self) -> GenerateRequest:
        missing = [name for name in ("prompt", "image") if not getattr(self, name)]
        if missing:
            raise InvalidRequest(
                f"missing {' and '.join(missing)}: send JSON "
                '{"prompt": "...", "image": "<base64 of the image file>"}'
            )
        return GenerateRequest.from_prompt(self.prompt, self.image, max_new_tokens=self.max_tokens)


class ClassifyRequest(_Body):
    """Zero-shot classification of one image over the given labels."""

    model: str | None = Field(None, min_length=1,
                              description="A served model; the first embed model if unset.")
    image: Annotated[str, WithJsonSchema(IMAGE)]
    labels: Annotated[list[str], WithJsonSchema(
        {"type": "array", "minItems": 1, "items": NONBLANK})] = Field(
        min_length=1, description="Candidate labels, e.g. captions.")

    def to_embed_request(self) -> EmbedRequest:
        return EmbedRequest(image=self.image, labels=list(self.labels))


class SearchRequest(_Body):
    """The k nearest items of a vector index to a text or an image (exactly one)."""

    model: str | None = Field(None, min_length=1,
                              description="The embed model (the index's own if unset).")
    index: str | None = Field(None, description="A served index; needed when several are.")
    text: Annotated[str | None, WithJsonSchema(nullable(NONBLANK))] = None
    image: Annotated[str | None, WithJsonSchema(nullable(IMAGE))] = None
    k: int = Field(5, ge=1, le=1000, description="How many results.")
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["text"], "properties": {"text": NONBLANK}},
        {"required": ["image"], "properties": {"image": IMAGE}},
    ]})

    def to_embed_request(self) -> EmbedRequest:
        if (self.text is None) == (self.image is None):
            raise InvalidRequest("give exactly one of text or image to search with")
        return EmbedRequest(text=self.text) if self.text is not None else EmbedRequest(image=self.image)


# --- errors ------------------------------------------------------------------------------------


def error_body(exc: BaseException, flat: bool = False) -> dict[str, Any]:
    """The one JSON error shape: OpenAI's ``{"error": {message, type, code}}``, or the flat
    ``{"error": message}`` of /predict's contract. Only RaysightErrors say what went wrong;
    anything else is a bug, and its details stay in the log."""
    from raysight.errors import RaysightError

    if isinstance(exc, RaysightError):
        message, code = exc.message, exc.code
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    else:
        message, code, kind = "internal server error", "internal_error", "server_error"
    if flat:
        return {"error": message}
    return {"error": {"message": message, "type": kind, "code": code}}
