"""Start Ray Serve with raysight's app: ``raysight serve`` and ``serve_models`` for the common
case, ``start_serving`` for callers (tests, notebooks) that keep control.

    raysight serve --model builtin:shapes-vlm --model builtin:shapes-clip [--port 8000]
                   [--index DIR] [--api-key KEY] [--serve-config FILE.yaml]
                   [--direct-ingress | --no-direct-ingress]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from contextlib import nullcontext
from typing import Sequence

from raysight.errors import ConfigError, RaysightError
from raysight.spec import ModelSpec
from serve_app import direct_ingress
from serve_app.config import IndexConfig, ServeConfig
from serve_app.relay import Relay, listening_socket

API_KEY_ENV = "RAYSIGHT_API_KEY"

logger = logging.getLogger(__name__)


def start_serving(config: ServeConfig) -> str:
    """Deploy `config` on the Ray this process is connected to; return the base URL once
    every deployment is up. Starts Serve's HTTP proxy on config.host:config.port if Serve
    is not running yet."""
    import ray
    from ray import serve

    from raysight.local_ray import current_local_ray
    from raysight.placement import nodes_from_ray
    from serve_app.app import LOGGING_CONFIG, build_app
    from serve_app.placement import check_placement

    # An ask the nodes cannot hold (GPUs; on raysight's private Ray, CPUs too) is refused
    # here, before Serve waits on it forever.
    check_placement(config, nodes_from_ray(ray.nodes()),
                    fixed_nodes=current_local_ray() is not None)
    # `auto` is resolved by `raysight serve` (serve_config), which starts the Ray for it;
    # an app deployed here on a Ray started otherwise goes through Serve's proxy.
    direct = config.ingress.direct is True
    serve.start(
        # Direct ingress: the replica and Serve's proxy listen on loopback ports of their own;
        # raysight's relay takes config.host:config.port (serve_app/relay.py).
        http_options={"host": "127.0.0.1" if direct else config.host,
                      "port": direct_ingress.free_port() if direct else config.port},
        logging_config=LOGGING_CONFIG,
    )
    # serve.run returns when every replica has loaded its model and passed its health check.
    with direct_ingress.proxy_url_hidden(config.app_name) if direct else nullcontext():
        serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix,
                  logging_config=LOGGING_CONFIG)
    if direct:
        host, port = config.host, _start_relay(config)
    else:
        host, port = _proxy_address(config)
    prefix = config.route_prefix.rstrip("/")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{prefix}"


# The relays in front of direct-ingress apps this process started, by app name.
_relays: dict[str, Relay] = {}


def _start_relay(config: ServeConfig) -> int:
    """Put raysight's relay on config.host:config.port in front of the app's replica; return
    the port it listens on (config.port, or the one picked for port 0)."""
    replica_port = direct_ingress.replica_port(config.app_name)
    if replica_port is None:
        raise ConfigError(
            f"ingress.direct: app {config.app_name!r} has no replica serving HTTP, so this Ray "
            "was not started for direct ingress; `raysight serve --direct-ingress` starts one "
            "that is (it cannot join a running cluster)")
    stop_relay(config.app_name)
    try:
        relay = Relay(config.host, config.port, replica_port).start()
    except OSError as exc:
        raise _port_taken(config, exc) from exc
    _relays[config.app_name] = relay
    return relay.port


def _port_taken(config: ServeConfig, error: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {config.host}:{config.port}: "
                       f"{error.strerror or error}; pick another --port")


def _check_port_free(config: ServeConfig) -> None:
    """Refuse a taken port before Ray starts: the relay binds it only once the model has
    loaded, seconds later (Serve's proxy, on the other path, reports its own)."""
    if config.port == 0:
        return
    try:
        listening_socket(config.host, config.port).close()
    except OSError as exc:
        raise _port_taken(config, exc) from exc


def relay_for(app_name: str) -> Relay | None:
    """The relay in front of `app_name`'s replica, if this process started one."""
    return _relays.get(app_name)


def stop_relay(app_name: str) -> None:
    """Close the relay in front of `app_name`'s replica, if this process started one."""
    relay = _relays.pop(app_name, None)
    if relay is not None:
        relay.stop()


def _proxy_address(config: ServeConfig) -> tuple[str, int]:
    """Where Serve's HTTP proxy listens: config.host/port, unless Serve was already running
    in this cluster with other HTTP options (they cannot change while it runs)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if (http.host, http.port) != (config.host, config.port):
        logger.warning("Serve was already running on %s:%s; the app is served there, not on "
                       "%s:%s", http.host, http.port, config.host, config.port)
    return http.host, http.port


def serve_config(config: ServeConfig, ray_address: str | None = None) -> None:
    """Serve `config` on Ray, print the URL and block until Ctrl-C or SIGTERM.

    With no address (and no $RAY_ADDRESS) Ray is raysight's private local Ray
    (raysight/local_ray.py: 127.0.0.1 only, token auth). With one, this command joined a
    cluster that others use. Either way, stopping is graceful: the app stops taking requests,
    those in flight get up to `config.drain_timeout_s` to finish, then the app is deleted; a
    private Ray is then shut down with every process it started.
    """
    import ray

    from raysight.local_ray import LOCAL, connect_ray, resolve_ray_address

    address = resolve_ray_address(ray_address)
    joined = address != LOCAL
    local = None
    ray_env = {}
    # `ingress.direct: auto` is direct ingress exactly when this command starts the Ray.
    config = config.with_direct_ingress_resolved(
        private_ray=not joined and not ray.is_initialized())
    if config.ingress.direct:
        if joined:
            raise ConfigError(
                f"--direct-ingress (ingress.direct) needs raysight's private local Ray, and "
                f"this command would join the cluster at {address}: Ray's processes there were "
                "started without it. Drop --address (and $RAY_ADDRESS), or --direct-ingress"
            )
        # The replica's own server takes a free loopback port; the relay takes config.port.
        _check_port_free(config)
        ray_env = direct_ingress.process_env(direct_ingress.free_port())
    if not ray.is_initialized():
        if not joined:
            from serve_app.proxy_edge import install

            install()  # the local Ray's Serve proxy answers a lost replica with a 503
        # Logs stay in Ray's log files: forwarding them to this terminal costs throughput.
        local = connect_ray(address, log_to_driver=False, process_env=ray_env or None)
    # After ray.init, which sets its own SIGTERM handler (sys.exit, no drain).
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = start_serving(config)
        names = ", ".join(served.name for served in config.models)
        where = f" on the Ray cluster at {address}" if joined else ""
        print(f"raysight: serving {names} at {url} (OpenAI API at {url}/v1; try it in a "
              f"browser at {url}/){where}; Ctrl-C to stop", flush=True)
        while not stop.wait(0.1):  # a short wait: the signal handler runs between waits
            pass
        print(f"raysight: shutting down (waiting up to {config.drain_timeout_s:g} s for "
              "requests in flight)", flush=True)
    finally:
        try:
            _stop_serving(config, joined)
        finally:
            if local is not None:
                local.stop()
            elif joined and ray.is_initialized():
                ray.shutdown()  # on a joined cluster this only disconnects this process
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _stop_serving(config: ServeConfig, joined: bool) -> None:
    """Undo what this command started: delete its app (its replicas finish the requests in
    flight first, up to config.drain_timeout_s), and on a private Ray all of Serve."""
    from ray import serve

    if not _deployed(config.app_name):  # refused before deploying (e.g. it cannot fit)
        if not joined:
            serve.shutdown()
        return
    if config.ingress.direct is True:
        try:
            # The replica's own server stays open while it drains: refuse new requests first.
            serve.get_app_handle(config.app_name).stop_admitting.remote().result(
                timeout_s=30)
        except Exception:  # noqa: BLE001 - the app may never have been deployed
            logger.warning("could not stop app %r taking requests", config.app_name,
                           exc_info=True)
    try:
        # Blocks until every replica of the app has stopped: Serve removes the app's routes
        # at once (no new requests) and each replica waits for its requests in flight.
        serve.delete(config.app_name)
    except Exception:  # noqa: BLE001 - the app may never have been deployed
        logger.warning("could not delete app %r", config.app_name, exc_info=True)
    finally:
        stop_relay(config.app_name)  # it passed the replica's refusals on while it drained
    if not joined:
        serve.shutdown()


def _deployed(app_name: str) -> bool:
    """Whether Serve has `app_name`, in any state (deploying, running, failed)."""
    from ray import serve

    try:
        return app_name in serve.status().applications
    except Exception:  # noqa: BLE001 - Serve in a bad state: try to delete the app anyway
        return True


def serve_models(
    specs: Sequence[ModelSpec],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    indexes: Sequence[str] = (),
    api_key: str | None = None,
    ray_address: str | None = None,
) -> None:
    """Serve `specs` over HTTP until interrupted (what ``raysight serve`` runs)."""
    config = ServeConfig.for_specs(
        list(specs), host=host, port=port, api_key=api_key,
        indexes=[IndexConfig(path=path) for path in indexes],
    )
    serve_config(config, ray_address)


def build_parser() -> argparse.ArgumentParser:
    from raysight.spec_arguments import add_spec_arguments

    parser = argparse.ArgumentParser(
        prog="raysight serve",
        description="Serve models over HTTP on Ray Serve (OpenAI-compatible API, /predict, "
        "/classify, /search).",
    )
    add_spec_arguments(parser, multiple=True)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--index", action="append", default=[],
                        help="a vector index folder for /search (repeatable)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    parser.add_argument("--serve-config", help="a ServeConfig YAML file (instead of --model)")
    parser.add_argument("--drain-timeout", type=float, default=None, metavar="SECONDS",
                        help="on SIGTERM or Ctrl-C, how long requests in flight may run "
                        "before the app stops (default 30)")
    parser.add_argument("--direct-ingress", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="the model's replica answers HTTP itself behind raysight's relay "
                        "on --port, without Serve's proxy (about half the CPU per request "
                        "outside the model). Default: on when serving one model with one "
                        "replica on the private local Ray, else off; --no-direct-ingress keeps "
                        "Serve's proxy (see README)")
    parser.add_argument("--address",
                        help="Ray cluster to join ('auto', 'HOST:6379', 'ray://HOST:10001'); "
                        "default: $RAY_ADDRESS, else a private local Ray. Stopping a command "
                        "that joined a cluster removes only its own app")
    return parser


def config_from_arguments(args: argparse.Namespace) -> ServeConfig:
    from raysight.spec_arguments import spec_from_arguments

    if args.serve_config:
        import yaml

        with open(args.serve_config, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        data.setdefault("host", args.host)
        data.setdefault("port", args.port)
        if args.drain_timeout is not None:
            data["drain_timeout_s"] = args.drain_timeout
        if args.api_key:
            data.setdefault("api_key", args.api_key)
        if args.direct_ingress is not None:
            data["ingress"] = {**(data.get("ingress") or {}), "direct": args.direct_ingress}
        return ServeConfig.from_mapping(data, source=args.serve_config)
    models = [(model, None) for model in args.model or []]
    models += [(None, config) for config in args.config or []]
    if not models:
        raise RaysightError("give at least one --model (or --config, or --serve-config)")
    specs = [spec_from_arguments(args, model, config) for model, config in models]
    drain = {} if args.drain_timeout is None else {"drain_timeout_s": args.drain_timeout}
    ingress = {} if args.direct_ingress is None else {
        "ingress": {"direct": args.direct_ingress}}
    return ServeConfig.for_specs(
        specs, host=args.host, port=args.port, api_key=args.api_key,
        indexes=[IndexConfig(path=path) for path in args.index], **drain, **ingress,
    )


def serve_command(argv: Sequence[str] | None = None) -> int:
    """``raysight serve ...``: parse flags, serve until Ctrl-C. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_arguments(args)
        serve_config(config, args.address)
    except RaysightError as exc:
        print(f"raysight serve: error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(serve_command())
