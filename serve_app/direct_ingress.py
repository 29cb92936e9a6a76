"""Direct ingress: the model's one replica answers HTTP on the app's port, no proxy between.

By default every request crosses Serve's HTTP proxy, then an actor call to the replica: on one
machine that is ~4-5 CPU-ms a request (README, Benchmarks). Ray Serve 2.60 can instead start
an HTTP server inside each replica of an app's ingress deployment (its "direct ingress"), which
in raysight's one-hop app is the model's replica itself. Serve hands those servers ports from a
range read when Ray's processes start; `process_env` makes that range the one port the user
asked for, so `raysight serve --direct-ingress --port 8000` answers on 8000 as it always does.

What it takes (checked against Ray 2.60's serve/_private: constants, node_port_manager,
replica): the settings must be in the environment of Ray's processes, so only a Ray that
raysight starts can have them; one port means one replica; Serve's own proxy still starts (on
the head node), so it is moved to another free port on the same host.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Iterator

from raysight.errors import ConfigError

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


def proxy_port(host: str) -> int:
    """A free port for Serve's own proxy, which still starts but must not take the app's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1" if host in ("0.0.0.0", "::") else host, 0))
        return sock.getsockname()[1]


@contextmanager
def proxy_url_hidden(app_name: str) -> Iterator[None]:
    """While deploying: drop Serve's "Application '<app>' is ready at <URL>." line. Its URL is
    Serve's own proxy on the spare port (it works, through the slower path), printed just
    before raysight's banner with the replica's; a user would see two URLs and take either."""
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


def check_replica_port(app_name: str, port: int) -> None:
    """Raise ConfigError unless the app's replica answers HTTP on `port` itself."""
    found = replica_port(app_name)
    if found == port:
        return
    if found is None:
        raise ConfigError(
            f"ingress.direct: app {app_name!r} has no replica serving HTTP, so this Ray was "
            "not started for direct ingress; `raysight serve --direct-ingress` starts one "
            "that is (it cannot join a running cluster)"
        )
    raise ConfigError(
        f"ingress.direct: app {app_name!r}'s replica serves HTTP on port {found}, not on "
        f"{port}; this Ray was started for another port"
    )
