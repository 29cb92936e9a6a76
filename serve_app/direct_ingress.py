"""Direct ingress: the model's one replica answers HTTP itself, no Serve proxy between.

By default every request crosses Serve's HTTP proxy, then an actor call to the replica: on one
machine that is ~4-5 CPU-ms a request (README, Benchmarks). Ray Serve 2.60 can instead start
an HTTP server inside each replica of an app's ingress deployment (its "direct ingress"), which
in raysight's one-hop app is the model's replica itself. Serve hands those servers ports from a
range read when Ray's processes start; `process_env` makes that range one free loopback port,
and raysight's relay (serve_app/relay.py) listens on the port the user asked for in front of
it, so `raysight serve --direct-ingress --port 8000` answers on 8000 as it always does and a
lost replica is still a JSON 503.

What it takes (checked against Ray 2.60's serve/_private: constants, node_port_manager,
replica): the settings must be in the environment of Ray's processes, so only a Ray that
raysight starts can have them; one port means one replica; Serve's own proxy still starts (on
the head node), so it is moved to another free loopback port.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Iterator

ENABLE_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"


def process_env(port: int) -> dict[str, str]:
    """The environment Ray's processes need for the app's replica to serve HTTP on `port`."""
    return {
        ENABLE_ENV: "1",
        # Serve allocates range(min, max): exactly this port, for the one replica.
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        # A replacement replica takes the port back at once (Serve's default holds a released
        # port for 150 s, so a lost replica would leave nothing to answer for that long).
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        # How long a stopping replica keeps answering is raysight's drain_timeout_s (each
        # replica's graceful shutdown), not an extra 30 s floor on every stop.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        # A replica that fails its health check is replaced at once rather than drained:
        # with one port, its replacement cannot bind until it is gone.
        "RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS": "1",
    }


def free_port() -> int:
    """A free loopback port (for the replica's own server, and for Serve's proxy, which
    still starts but must not take the app's port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def proxy_url_hidden(app_name: str) -> Iterator[None]:
    """While deploying: drop Serve's "Application '<app>' is ready at <URL>." line. Its URL is
    Serve's own proxy on the spare port (it works, through the slower path), printed just
    before raysight's banner with the relay's; a user would see two URLs and take either."""
    serve_logger = logging.getLogger("ray.serve")
    ready = f"Application '{app_name}' is ready"

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ready)

    serve_logger.addFilter(keep)
    try:
        yield
    finally:
        serve_logger.removeFilter(keep)


def replica_port(app_name: str) -> int | None:
    """The port the app's replica serves HTTP on, None when it serves none (this Ray's
    Serve was not started for direct ingress)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    for group in details.get("target_groups") or []:
        if group.get("app_name") == app_name and group.get("protocol") == "HTTP":
            ports = {target["port"] for target in group.get("targets") or []}
            if len(ports) == 1:
                return ports.pop()
    return None
