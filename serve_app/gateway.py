"""The ingress's work, without HTTP or Ray: pick the model a request names, call it, shape
the answer. Routes (routes.py) parse HTTP into these calls; models are reached through a
ModelClient, which is a Serve DeploymentHandle in production (app.py) and an in-process
ModelServer in unit tests.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from raysight.errors import (ConfigError, InternalError, InvalidRequest, Overloaded,
                             RaysightError, UnknownModel, internal_error)
from serve_app.config import IndexConfig, ServeConfig
from serve_app.deployment import Served
from serve_app.openai_api import (ChatCompletionRequest, ChunkWriter, ClassifyRequest,
                                  EmbeddingsRequest, PredictRequest, SearchRequest,
                                  chat_completion, embedding_data, error_body)
from serve_app.stream_events import Accepted, Delta, Failed, Final

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0


class ModelOverloaded(Overloaded):
    """A model's queue is full; the client should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReplicaLost(ModelOverloaded):
    """The model replica holding a request died (killed, out of memory, its node lost, or
    replaced after failing its health check) and no other replica could take the request."""

    code = "replica_lost"


class ShuttingDown(ModelOverloaded):
    """The server is stopping: it answers the requests it holds and takes no new ones."""

    code = "shutting_down"


class ModelClient(Protocol):
    """How the gateway reaches one model's ModelServer."""

    async def call(self, method: str, *args: Any) -> Any: ...

    def stream(self, method: str, *args: Any) -> AsyncIterator[Any]: ...

    def refusal(self) -> ModelOverloaded | None:
        """The 503 to answer at once, before a request's body is read, when this model holds
        all it can; None while it has room."""
        ...


@dataclass(frozen=True)
class AdmissionPool:
    """The models that could answer a route, as Serve's proxy sees them: `limit` requests at
    once between them (every ingress replica's share together), then a 503 that asks the
    client to retry after `retry_after_s`. `key` names the pool within the Serve cluster."""

    key: str
    limit: int
    retry_after_s: int
    models: tuple[str, ...]


# The task of the model each model route calls (the edge refuses by it before the body).
ROUTE_TASKS = {"/v1/chat/completions": "generate", "/predict": "generate",
               "/v1/embeddings": "embed", "/classify": "embed", "/search": "embed"}


class LocalClient:
    """A ModelServer in this process (tests, and anything that wants no Ray)."""

    def __init__(self, server: Any):
        self.server = server
        # In-process there is no queue to overflow: the only refusal is set when the server
        # stops taking requests (DirectModelServer.stop_admitting).
        self.refusing: ModelOverloaded | None = None

    async def call(self, method: str, *args: Any) -> Any:
        result = getattr(self.server, method)(*args)
        return await result if inspect.isawaitable(result) else result

    def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        return getattr(self.server, method)(*args)

    def refusal(self) -> ModelOverloaded | None:
        return self.refusing


@dataclass
class Reply:
    """A JSON answer and, for its response headers, the largest model batch that produced it,
    the longest its inputs waited for their batches and the longest those batches ran."""

    body: dict[str, Any]
    batch_size: int = 0
    queue_wait_s: float = 0.0
    model_s: float = 0.0

    @classmethod
    def served(cls, body: dict[str, Any], *answers: Served) -> "Reply":
        return cls(body, max(a.batch_size for a in answers),
                   max(a.queue_wait_s for a in answers), max(a.model_s for a in answers))


def _check(served: Served) -> Any:
    if served.error is not None:
        raise served.error
    return served.result


class Gateway:
    """Routes requests by model name to model clients; answers in the API's shapes."""

    def __init__(self, config: ServeConfig, clients: dict[str, ModelClient]):
        missing = [served.name for served in config.models if served.name not in clients]
        if missing:
            raise ConfigError(f"no model client for {', '.join(missing)}")
        self.config = config
        self.clients = clients
        self.created = int(time.time())
        self._infos: dict[str, dict] = {}
        self._asking: set[str] = set()  # models asked their info in the background
        self.indexes = {index.index_name: (index, _load_index(index)) for index in config.indexes}

    # -- models --------------------------------------------------------------------------
    def client(self, name: str) -> ModelClient:
        if name not in self.clients:
            raise UnknownModel(
                f"model {name!r} is not served here; served models: {', '.join(self.clients)}"
            )
        return self.clients[name]

    def refusal(self, path: str) -> ModelOverloaded | None:
        """A 503 for a request to `path` when every model that could answer it is full, so
        the edge refuses it before reading its body (under a burst, reading and parsing
        hundreds of bodies only to refuse them is what made the 503s slow). Models whose task
        is not known yet (never asked) count as having room."""
        task = ROUTE_TASKS.get(path)
        if task is None:
            return None
        refused = None
        for name, client in self.clients.items():
            info = self._infos.get(name)
            if info is None or info["task"] == task:
                # A client without admission (a test's stand-in) always has room.
                refusal = getattr(client, "refusal", None)
                refused = refusal() if refusal is not None else None
                if refused is None:
                    return None
        return refused

    def admission_pool(self, path: str) -> AdmissionPool | None:
        """The pool of models behind `path`, for Serve's proxy to refuse requests past its
        capacity without passing them here (serve_app/proxy_edge.py); None while a model's
        task is unknown (it might serve `path` too) or a model has no capacity (in-process)."""
        task = ROUTE_TASKS.get(path)
        if task is None:
            return None
        unknown = [name for name in self.clients if name not in self._infos]
        if unknown:
            self._ask_in_background(unknown)  # known by a later answer
            return None
        names = [name for name in self.clients if self._infos[name]["task"] == task]
        clients = [self.clients[name] for name in names]
        capacities = [getattr(client, "capacity", None) for client in clients]
        if not names or None in capacities:
            return None
        return AdmissionPool(
            key=f"{self.config.app_name}/{task}",
            limit=sum(capacities) * self.config.ingress.num_replicas,
            retry_after_s=max(getattr(client, "retry_after_s", 1) for client in clients),
            models=tuple(names))

    def _ask_in_background(self, names: list[str]) -> None:
        """Ask each of `names` its info without waiting (requests that name their model never
        need it, so the gateway may not know a model's task otherwise)."""
        for name in names:
            if name in self._asking:
                continue
            self._asking.add(name)
            asked = asyncio.ensure_future(self.info(name))
            asked.add_done_callback(lambda done, name=name: self._asked(name, done))

    def _asked(self, name: str, done: asyncio.Future) -> None:
        self._asking.discard(name)
        if not done.cancelled() and done.exception() is not None:
            logger.info("model %s did not give its info yet: %s", name, done.exception())

    async def info(self, name: str) -> dict[str, Any]:
        if name not in self._infos:
            self._infos[name] = await self.client(name).call("info")
        return self._infos[name]

    async def model_for(self, requested: str | None, task: str) -> str:
        """The model a request names, or the first served model of `task` if it names none."""
        if requested:
            self.client(requested)
            return requested
        for served in self.config.models:
            if (await self.info(served.name))["task"] == task:
                return served.name
        raise InvalidRequest(f"no {task} model is served here; name one with 'model'")

    async def list_models(self) -> dict[str, Any]:
        data = []
        for served in self.config.models:
            entry = {"id": served.name, "object": "model", "created": self.created,
                     "owned_by": "raysight", "root": served.spec.model}
            try:
                info = await asyncio.wait_for(self.info(served.name), READY_TIMEOUT_S)
                entry["task"] = info["task"]
                for key in ("max_batch_size", "max_batch_size_auto"):
                    if key in info:
                        entry[key] = info[key]
            except Exception:  # noqa: BLE001 - a model still loading is listed without task
                pass
            data.append(entry)
        return {"object": "list", "data": data}

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        async def one(name: str) -> str:
            try:
                await asyncio.wait_for(self.client(name).call("ready"), READY_TIMEOUT_S)
                return "ready"
            except ModelOverloaded:
                return "busy"  # loaded and working, its queue full: still ready
            except Exception:  # noqa: BLE001 - any other failure means not ready
                return "not ready"

        states = await asyncio.gather(*(one(name) for name in self.clients))
        status = dict(zip(self.clients, states))
        return all(state != "not ready" for state in states), status

    # -- generate ------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest) -> Reply:
        request = body.to_generate_request()
        name = await self.model_for(body.model, "generate")
        served: Served = await self.client(name).call("generate", request)
        return Reply.served(chat_completion(_check(served), name), served)

    async def chat_stream(self, body: ChatCompletionRequest) -> AsyncIterator[str]:
        """Server-sent events for a streamed chat. Raises before the first event if the
        request is refused (the replica's first event is Failed), so the client gets a plain
        4xx instead of a broken stream."""
        request = body.to_generate_request()
        name = await self.model_for(body.model, "generate")
        stream = self.client(name).stream("generate_stream", request)
        match await stream.__anext__():
            case Accepted():
                pass
            case Failed(error=error):
                await stream.aclose()
                raise error
            case other:
                await stream.aclose()
                raise TypeError(f"a stream must start with Accepted or Failed, not {other!r}")
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return self._events(stream, ChunkWriter(name), include_usage)

    async def _events(self, stream, writer: ChunkWriter, include_usage: bool) -> AsyncIterator[str]:
        """The chunks after Accepted: one per Delta, then the finish (and usage) from Final,
        or the error of Failed; always ends with [DONE]."""
        yield writer.role()
        try:
            async for event in stream:
                match event:
                    case Delta(text=text):
                        yield writer.text(text)
                    case Final(result=result, batch_size=batch_size):
                        yield writer.finish(result.finish_reason, batch_size)
                        if include_usage:
                            yield writer.usage(result)
                        break
                    case Failed(error=error):
                        yield writer.error(error_body(error))
                        break
                    case _:
                        raise TypeError(f"unexpected event in a chat stream: {event!r}")
        except Exception as exc:  # noqa: BLE001 - the status is sent; report in-stream
            error = exc if isinstance(exc, RaysightError) else internal_error(
                logger, "a streamed completion failed", exc)
            yield writer.error(error_body(error))
        finally:
            await stream.aclose()  # also when the client went away mid-stream
        yield writer.done()

    async def predict(self, body: PredictRequest) -> Reply:
        request = body.to_generate_request()
        name = await self.model_for(body.model, "generate")
        served: Served = await self.client(name).call("generate", request)
        return Reply.served({"output": _check(served).text}, served)

    # -- embed ---------------------------------------------------------------------------
    async def embeddings(self, body: EmbeddingsRequest) -> Reply:
        requests = body.to_embed_requests(self.config.max_inputs_per_request)
        name = await self.model_for(body.model, "embed")
        results: list[Served] = await self.client(name).call("embed", requests)
        data, tokens = [], 0
        for position, served in enumerate(results):
            if served.error is not None:
                error = served.error
                if isinstance(error, InternalError):
                    raise error  # its message is only an id; the position adds nothing to find
                raise type(error)(f"input {position}: {error.message}")
            data.append(embedding_data(position, served.result.vector, body.encoding_format))
            tokens += served.result.tokens
        body_out = {"object": "list", "data": data, "model": name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Reply.served(body_out, *results)

    async def classify(self, body: ClassifyRequest) -> Reply:
        name = await self.model_for(body.model, "embed")
        [served] = await self.client(name).call("embed", [body.to_embed_request()])
        result = _check(served)
        scores = sorted(zip(result.labels, result.probs), key=lambda pair: -pair[1])
        return Reply.served({
            "model": name,
            "label": result.label,
            "scores": [{"label": label, "score": prob} for label, prob in scores],
        }, served)

    async def search(self, body: SearchRequest) -> Reply:
        index_name, (index_config, index) = self.index(body.index)
        name = body.model or await self._index_model(index_config, index)
        [served] = await self.client(name).call("embed", [body.to_embed_request()])
        vector = _check(served).vector
        [hits] = await asyncio.to_thread(index.search, vector, body.k)
        return Reply.served({
            "index": index_name,
            "model": name,
            "results": [{"id": hit.id, "score": hit.score} for hit in hits],
        }, served)

    def index(self, requested: str | None):
        """(name, (IndexConfig, VectorIndex)) of the index a request names, or the only one."""
        if not self.indexes:
            raise InvalidRequest("no vector index is configured; start the server with an index")
        if requested is None:
            if len(self.indexes) > 1:
                raise InvalidRequest(
                    f"several indexes are served ({', '.join(self.indexes)}); name one with 'index'"
                )
            requested = next(iter(self.indexes))
        if requested not in self.indexes:
            raise UnknownModel(
                f"no index named {requested!r}; indexes: {', '.join(self.indexes)}"
            )
        return requested, self.indexes[requested]

    async def _index_model(self, index_config: IndexConfig, index) -> str:
        if index_config.model:
            return index_config.model
        built_with = index.meta.get("model")
        for served in self.config.models:
            if built_with in (served.name, served.spec.model):
                return served.name
        return await self.model_for(None, "embed")


def _load_index(index: IndexConfig):
    from raysight.index import VectorIndex

    loaded = VectorIndex.load(index.path)
    logger.info("loaded index %s (%d vectors, dim %d)", index.index_name, len(loaded), loaded.dim)
    return loaded
