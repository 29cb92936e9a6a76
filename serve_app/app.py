"""Build the Ray Serve application: one deployment per model, and a FastAPI ingress that
routes requests to them by model name; an app of one model is one deployment that answers
HTTP itself (serve_app/direct.py).

    serve run serve_app/config.yaml          (import_path: serve_app.app:app_builder)
    serve.run(build_app(ServeConfig(...)))   from Python
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from serve_app.body_replay import mark_readers
from serve_app.config import ServeConfig, ServedModel
from serve_app.deployment import ModelServer
from serve_app.direct import DirectModelServer, is_direct
from serve_app.gateway import Gateway, ModelOverloaded, ReplicaLost
from serve_app.metrics import IngressMetrics
from serve_app.routes import build_http_api

logger = logging.getLogger(__name__)

INGRESS_NAME = "ingress"
# Access logs cost ~40% of throughput on small CPU machines; errors are still logged.
LOGGING_CONFIG = {"enable_access_log": False}


# How long a request lost with its replica waits for another replica to take it; past this
# the deployment has none up (the lost one is restarting) and the client gets a 503 at once.
REPLICA_WAIT_S = 2.0


class HandleClient:
    """A ModelClient over a Serve DeploymentHandle: a full queue becomes a 503, and so does a
    lost replica, after one retry.

    A request whose replica dies while holding it (Ray raises ActorDiedError or
    ActorUnavailableError, both RayActorError) is sent once more, to another replica; Serve's
    router has already struck the dead one off. From here a unary call cannot tell whether the
    replica had begun the request's batch, and asking it would cost a message per request, so
    every lost request gets this one retry; a second loss, or no other replica within
    REPLICA_WAIT_S, is a 503 ``replica_lost`` with Retry-After. So no request ends in an
    internal 500 for a lost replica, and a request that itself kills replicas (a memory bomb)
    takes down at most two. Requests that no replica had accepted yet are re-routed by Serve
    itself. A stream is retried only until its first event; after that the client has seen
    part of the answer, and the stream ends with a ``replica_lost`` error event.
    """

    def __init__(self, handle, model: str, retry_after_s: int, capacity: int | None = None,
                 replica_wait_s: float = REPLICA_WAIT_S):
        self.handle = handle
        self.model = model
        self.retry_after_s = retry_after_s
        self.capacity = capacity
        self.replica_wait_s = replica_wait_s
        self.in_flight = 0  # calls and streams handed to Serve and not yet over
        self.lost = 0  # requests whose replica died while holding them (retried or not)

    def refusal(self) -> ModelOverloaded | None:
        """A 503 while this ingress already has `capacity` requests out to the model: what
        every replica holds plus the handle's queue. Past it Serve would refuse too, but only
        after the request's body was read, parsed and handed to its router."""
        if self.capacity is not None and self.in_flight >= self.capacity:
            return self._overloaded(f"at capacity ({self.capacity} requests in progress or "
                                    "queued)")
        return None

    def _overloaded(self, why: str) -> ModelOverloaded:
        return ModelOverloaded(
            f"model {self.model!r} is {why}; retry after {self.retry_after_s}s",
            self.retry_after_s,
        )

    def _replica_lost(self, why: str) -> ReplicaLost:
        return ReplicaLost(
            f"the replica of model {self.model!r} running this request was lost (it died or "
            f"was restarted); {why}; retry after {self.retry_after_s}s",
            self.retry_after_s,
        )

    async def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError,
                                          ReplicaUnavailableError)

        refused = self.refusal()
        if refused is not None:
            raise refused
        self.in_flight += 1
        try:
            try:
                return await self.handle.options(method_name=method).remote(*args)
            except RayActorError:
                self.lost += 1
                logger.warning("a replica of %s was lost holding a %s call; retrying it once",
                               self.model, method)
            handle = self.handle.options(method_name=method)
            async with self._another_replica(handle, args) as selection:
                try:
                    return await handle.dispatch(selection, *args)
                except (RayActorError, ReplicaUnavailableError):
                    self.lost += 1
                    raise self._replica_lost("so was the replica it was retried on") from None
        except BackPressureError:
            raise self._overloaded("at capacity (its queue is full)") from None
        except DeploymentUnavailableError:
            raise self._overloaded("not available right now") from None
        finally:
            self.in_flight -= 1

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError,
                                          ReplicaUnavailableError)

        refused = self.refusal()
        if refused is not None:
            raise refused
        handle = self.handle.options(method_name=method, stream=True)
        self.in_flight += 1
        responses = handle.remote(*args)
        retried = False
        try:
            try:
                first = await responses.__anext__()
            except RayActorError:
                # Nothing reached the client yet: the stream can start again elsewhere.
                self.lost += 1
                responses.cancel()
                retried = True
                async with self._another_replica(handle, args) as selection:
                    responses = handle.dispatch(selection, *args)
                    first = await responses.__anext__()
            yield first
            async for item in responses:
                yield item
        except StopAsyncIteration:
            return
        except BackPressureError:
            raise self._overloaded("at capacity (its queue is full)") from None
        except DeploymentUnavailableError:
            raise self._overloaded("not available right now") from None
        except (RayActorError, ReplicaUnavailableError):
            self.lost += 1
            why = ("so was the replica it was retried on" if retried else
                   "the answer had begun, so it was not retried")
            raise self._replica_lost(why) from None
        finally:
            self.in_flight -= 1
            responses.cancel()

    @asynccontextmanager
    async def _another_replica(self, handle, args: tuple) -> AsyncIterator[Any]:
        """A replica reserved for a retry, or a 503 if none takes it within replica_wait_s."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        chooser = handle.choose_replica(*args)
        try:
            selection = await asyncio.wait_for(chooser.__aenter__(), self.replica_wait_s)
        except (asyncio.TimeoutError, BackPressureError, DeploymentUnavailableError):
            # No replica up, or the queue for one already full of other retries.
            raise self._replica_lost(
                f"no other replica took it within {self.replica_wait_s:g}s") from None
        try:
            yield selection
        finally:
            await chooser.__aexit__(None, None, None)  # releases the slot if not dispatched


class Ingress:
    """The HTTP-facing replica: builds the Gateway over handles to the model deployments.

    ``build_app`` wraps it with ``serve.ingress()``; Serve then calls
    ``__serve_build_asgi_app__`` in the replica for the FastAPI app.
    """

    def __init__(self, config: ServeConfig, handles: dict[str, Any]):
        clients = {
            name: HandleClient(handle, name, config.model(name).deployment.retry_after_s,
                               capacity=admission_capacity(config, name))
            for name, handle in handles.items()
        }
        self.gateway = Gateway(config, clients)

    def __serve_build_asgi_app__(self):
        mark_readers()  # a request re-sent here from a lost replica still reads its body
        return build_http_api(self.gateway, IngressMetrics())


def admission_capacity(config: ServeConfig, name: str) -> int:
    """Requests one ingress replica lets out to model `name` at once: every replica's
    max_ongoing_requests (at the autoscaler's max_replicas) plus the handle's
    max_queued_requests, shared among the ingress replicas."""
    served = config.model(name)
    options = served.deployment
    replicas = (options.autoscaling_config or {}).get("max_replicas", options.num_replicas)
    total = replicas * served.max_ongoing_requests + options.max_queued_requests
    return max(1, -(-total // config.ingress.num_replicas))


def deployment_name(model: str) -> str:
    """A Serve deployment name for a served model name (letters, digits, '-', '_', '.')."""
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model)


def model_deployment(served: ServedModel, server_class: type = ModelServer,
                     drain_timeout_s: float = 30.0):
    """The Serve deployment (not yet bound) of one served model: `server_class` with the
    options of `served.deployment`; a replica being stopped lets its requests in flight run
    up to `drain_timeout_s`."""
    from ray import serve

    options = served.deployment
    scaling: dict[str, Any] = (
        {"autoscaling_config": options.autoscaling_config}
        if options.autoscaling_config else {"num_replicas": options.num_replicas}
    )
    return serve.deployment(
        server_class,
        name=deployment_name(served.name),
        ray_actor_options=options.ray_actor_options(),
        # >= max_batch_size: Serve's default of 5 would silently cap every batch at 5.
        max_ongoing_requests=served.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
        backpressure_config={"retry_after_s": options.retry_after_s},
        graceful_shutdown_timeout_s=drain_timeout_s,
        health_check_period_s=options.health_check_period_s,
        logging_config=LOGGING_CONFIG,
        **scaling,
    )


def ingress_deployment(config: ServeConfig):
    """The Serve deployment (not yet bound) of the HTTP ingress, with `config.ingress`'s
    options; bind it to (config, handles of the model deployments)."""
    from ray import serve

    ingress = config.ingress
    return serve.deployment(
        serve.ingress()(Ingress),
        name=INGRESS_NAME,
        num_replicas=ingress.num_replicas,
        ray_actor_options={"num_cpus": ingress.num_cpus},
        max_ongoing_requests=ingress.max_ongoing_requests,
        max_queued_requests=ingress.max_queued_requests,
        backpressure_config={"retry_after_s": 1},
        graceful_shutdown_timeout_s=config.drain_timeout_s,
        logging_config=LOGGING_CONFIG,
    )


def build_app(config: ServeConfig):
    """The Serve application for `config` (pass it to ``serve.run``): one deployment that
    answers HTTP itself when one model is served (serve_app/direct.py), else a deployment
    per model behind an ingress."""
    if is_direct(config):
        from ray import serve

        [served] = config.models
        return model_deployment(served, serve.ingress()(DirectModelServer),
                                config.drain_timeout_s).bind(
            config, served.spec, served.deployment.torch_threads,
            stuck_batch_s=served.deployment.stuck_batch_s,
            concurrent_batches=served.deployment.concurrent_batches)
    handles = {
        served.name: model_deployment(served, drain_timeout_s=config.drain_timeout_s).bind(
            served.spec, served.deployment.torch_threads,
            stuck_batch_s=served.deployment.stuck_batch_s,
            concurrent_batches=served.deployment.concurrent_batches)
        for served in config.models
    }
    return ingress_deployment(config).bind(config, handles)


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files: ``import_path: serve_app.app:app_builder`` with
    the ServeConfig fields under ``args``."""
    return build_app(ServeConfig.from_mapping(dict(args), source="serve config args"))
