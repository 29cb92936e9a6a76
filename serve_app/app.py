"""Build the Ray Serve application: one deployment per model, and a FastAPI ingress that
routes requests to them by model name.

    serve run serve_app/config.yaml          (import_path: serve_app.app:app_builder)
    serve.run(build_app(ServeConfig(...)))   from Python
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

from serve_app.config import ServeConfig, ServedModel
from serve_app.deployment import ModelServer
from serve_app.gateway import Gateway, ModelOverloaded
from serve_app.metrics import IngressMetrics
from serve_app.routes import build_http_api

INGRESS_NAME = "ingress"
# Access logs cost ~40% of throughput on small CPU machines; errors are still logged.
LOGGING_CONFIG = {"enable_access_log": False}


class HandleClient:
    """A ModelClient over a Serve DeploymentHandle; a full queue becomes a 503."""

    def __init__(self, handle, model: str, retry_after_s: int):
        self.handle = handle
        self.model = model
        self.retry_after_s = retry_after_s

    def _overloaded(self, why: str) -> ModelOverloaded:
        return ModelOverloaded(
            f"model {self.model!r} is {why}; retry after {self.retry_after_s}s",
            self.retry_after_s,
        )

    async def call(self, method: str, *args: Any) -> Any:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            return await self.handle.options(method_name=method).remote(*args)
        except BackPressureError:
            raise self._overloaded("at capacity (its queue is full)") from None
        except DeploymentUnavailableError:
            raise self._overloaded("not available right now") from None

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        responses = self.handle.options(method_name=method, stream=True).remote(*args)
        try:
            async for item in responses:
                yield item
        except BackPressureError:
            raise self._overloaded("at capacity (its queue is full)") from None
        except DeploymentUnavailableError:
            raise self._overloaded("not available right now") from None
        finally:
            responses.cancel()


class Ingress:
    """The HTTP-facing replica: builds the Gateway over handles to the model deployments.

    ``build_app`` wraps it with ``serve.ingress()``; Serve then calls
    ``__serve_build_asgi_app__`` in the replica for the FastAPI app.
    """

    def __init__(self, config: ServeConfig, handles: dict[str, Any]):
        clients = {
            name: HandleClient(handle, name, config.model(name).deployment.retry_after_s)
            for name, handle in handles.items()
        }
        self.gateway = Gateway(config, clients)

    def __serve_build_asgi_app__(self):
        return build_http_api(self.gateway, IngressMetrics())


def deployment_name(model: str) -> str:
    """A Serve deployment name for a served model name (letters, digits, '-', '_', '.')."""
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model)


def model_deployment(served: ServedModel):
    """The Serve deployment (not yet bound) of one served model: ModelServer with the
    options of `served.deployment`."""
    from ray import serve

    options = served.deployment
    scaling: dict[str, Any] = (
        {"autoscaling_config": options.autoscaling_config}
        if options.autoscaling_config else {"num_replicas": options.num_replicas}
    )
    return serve.deployment(
        ModelServer,
        name=deployment_name(served.name),
        ray_actor_options=options.ray_actor_options(),
        # >= max_batch_size: Serve's default of 5 would silently cap every batch at 5.
        max_ongoing_requests=served.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
        backpressure_config={"retry_after_s": options.retry_after_s},
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
        logging_config=LOGGING_CONFIG,
    )


def build_app(config: ServeConfig):
    """The Serve application for `config` (pass it to ``serve.run``)."""
    handles = {served.name: model_deployment(served).bind(served.spec,
                                                           served.deployment.torch_threads)
               for served in config.models}
    return ingress_deployment(config).bind(config, handles)


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files: ``import_path: serve_app.app:app_builder`` with
    the ServeConfig fields under ``args``."""
    return build_app(ServeConfig.from_mapping(dict(args), source="serve config args"))
