"""One model, one hop: the model deployment answers HTTP itself.

With a separate ingress every request crosses two Ray calls (proxy → ingress → model) and
its image is pickled twice; on a 2-core machine the ingress alone cost ~11 CPU-ms per
embedding request and ~5-10 ms of latency (README "Benchmarks"). When an application serves
a single model the ingress only forwards, so by default (``ingress.separate: false``)
``build_app`` deploys this instead: the ModelServer with the same FastAPI app in its own
replica, reached through a LocalClient. The proxy → replica call is then the only hop, and
routing, parsing and the checks on the request path are exactly those of the separate
ingress (same Gateway, same routes).

Several models, or ``ingress.separate: true``, keep the separate ingress (app.py).

A replica that dies holding requests: the proxy's own answer would be a bare 500 (there is
no ingress left to retry elsewhere); serve_app/proxy_edge.py turns it into a 503
``replica_lost`` with Retry-After when raysight starts the Ray it serves on, and also ends
the calls Ray 2.60 sometimes never fails when a replica is killed just after accepting them.
A request Serve's router re-sends from the dying replica to its replacement gets its body
again from the proxy (serve_app/body_replay.py), so it is answered instead of waiting for a
body until its client's timeout.
"""

from __future__ import annotations

from typing import Any

from raysight.spec import ModelSpec
from serve_app.body_replay import mark_readers
from serve_app.config import ServeConfig
from serve_app.deployment import ModelServer
from serve_app.gateway import Gateway, LocalClient, ShuttingDown
from serve_app.metrics import IngressMetrics
from serve_app.routes import build_http_api


class DirectModelServer(ModelServer):
    """A ModelServer that is also its application's HTTP ingress (one model per app).

    Everything a ModelServer offers stays callable through a handle (``info``, ``ready``,
    ``embed``...); Serve calls ``__serve_build_asgi_app__`` for the FastAPI app, whose
    Gateway reaches this same object in-process.
    """

    def __init__(self, config: ServeConfig, spec: ModelSpec, *args: Any, **options: Any):
        super().__init__(spec, *args, **options)
        self.local = LocalClient(self)
        self.gateway = Gateway(config, {spec.served_name: self.local})

    def stop_admitting(self) -> None:
        """From now on answer each new model request with a 503 ``shutting_down`` before its
        body is read; requests already here are answered. `raysight serve --direct-ingress`
        calls this when it stops: the replica's own HTTP server stays open while it drains,
        where Serve's proxy would have stopped routing to it at once."""
        self.local.refusing = ShuttingDown(
            "the server is shutting down and takes no new requests; retry in a moment (or "
            "on another server)")

    def __serve_build_asgi_app__(self):
        mark_readers()  # a request Serve re-sends here from a killed replica reads its body
        return build_http_api(self.gateway, IngressMetrics())


def is_direct(config: ServeConfig) -> bool:
    """Whether `config`'s app is one DirectModelServer deployment (one model, not told to
    keep a separate ingress)."""
    return len(config.models) == 1 and not config.ingress.separate
