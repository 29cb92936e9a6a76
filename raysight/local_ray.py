"""raysight's own local Ray: the one place that starts a private Ray for this process.

`raysight serve`, the offline jobs, the demo and the bench all start Ray here when no cluster
address is given. What this adds to a bare ``ray.init()``:

- **Loopback only.** The node address is 127.0.0.1, so the GCS, the raylet's node-manager and
  object-manager ports, every worker's port, the dashboard (when asked for) and its agent, the
  runtime-env agent and the metrics endpoints all bind 127.0.0.1 instead of every interface.
  (Ray binds its gRPC servers to loopback exactly when the node address is 127.0.0.1; a plain
  ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten to the host's address, so this sets
  Ray's local-only switch, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, while Ray starts.)
- **Token auth stays on.** Ray 2.60 turns token auth on for a new local Ray. Rather than let it
  write a token to ``~/.ray/auth_token``, each private Ray gets a fresh token in this process's
  environment (``RAY_AUTH_TOKEN``), which its own processes and this process's children
  inherit. A token or ``RAY_AUTH_MODE`` the user set is respected.
- **Workers at nice 0**, unless the user set ``RAY_worker_niceness`` (Ray's default is 15,
  which cost one client ~30% latency on a busy 2-core machine).
- **A quieter idle.** Serve's controller loop runs every 0.5 s instead of 0.1 s
  (``RAY_SERVE_CONTROL_LOOP_INTERVAL_S``), the raylet reports its resources to the GCS
  every second instead of every 100 ms (``raylet_report_resources_period_milliseconds``; one
  node, no autoscaler reads it sooner), and the proxy and the replicas hand the request
  counts and latencies they cache to Ray's metrics every second instead of every 100 ms
  (``RAY_SERVE_METRICS_EXPORT_INTERVAL_MS``; Ray exports metrics every few seconds anyway,
  so no figure is lost or much later). An idle one-model server's Ray and Serve processes
  burned ~0.09 cores with Ray's defaults, paid by every request (~6.5 ms each at 13.5 req/s
  on 2 cores; README "Benchmarks"); ~0.047 with these. A value the user set wins.
- **Nothing left behind.** A watchdog process started with the Ray stops every process of that
  Ray when this process ends, even by SIGKILL (Ray's own fate-sharing only covers the
  processes the driver started directly, not the agents and workers below the raylet).

Joining a cluster (an address, or ``RAY_ADDRESS``) goes straight to ``ray.init(address)``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

LOCAL = "local"
# Every process of a private Ray inherits this variable (value: that Ray's id); the watchdog
# finds them by it, including workers reparented to init after their raylet died.
MARKER_ENV = "RAYSIGHT_LOCAL_RAY"
NICENESS_ENV = "RAY_worker_niceness"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENVS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
LOOPBACK = "127.0.0.1"
# Idle-cost settings of a private Ray (module docstring); the user's environment wins.
QUIET_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
             "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}
QUIET_SYSTEM_CONFIG = {"raylet_report_resources_period_milliseconds": 1000}


def resolve_ray_address(address: str | None) -> str:
    """The Ray to use: `address` if given, else $RAY_ADDRESS, else "local" (a private Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


class LocalRay:
    """A private Ray this process started (see the module docstring); `stop()` ends it."""

    def __init__(self, ray_id: str, watchdog: subprocess.Popen):
        self.ray_id = ray_id
        self._watchdog = watchdog

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut Ray down, then let the watchdog end whatever of it is still running."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._watchdog.stdin is not None and not self._watchdog.stdin.closed:
            self._watchdog.stdin.close()  # EOF: the watchdog's cue to sweep and exit
        try:
            self._watchdog.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("the Ray watchdog (pid %d) did not finish in %.0f s",
                           self._watchdog.pid, timeout_s)
        global _current
        if _current is self:
            _current = None


_current: LocalRay | None = None


def current_local_ray() -> LocalRay | None:
    """The private Ray this process started and has not stopped, if any."""
    return _current


def start_local_ray(process_env: dict[str, str] | None = None, **init_options) -> LocalRay:
    """Start a private local Ray for this process (loopback only, token auth, workers at nice
    0, a watchdog). `process_env`: environment variables for Ray's own processes (settings
    they read when they start, such as Serve's); they win over this process's environment.
    `init_options` go to ``ray.init`` (num_cpus, include_dashboard, _temp_dir,
    log_to_driver, logging options...); the address and node address are set here."""
    import ray

    global _current
    for option in ("address", "_node_ip_address"):
        if option in init_options:
            raise TypeError(f"start_local_ray sets {option} itself; join a cluster with "
                            "ray.init(address=...) instead")
    ray_id = uuid.uuid4().hex
    watchdog = _start_watchdog(ray_id)
    init_options.setdefault("include_dashboard", False)
    if init_options.get("include_dashboard"):
        init_options.setdefault("dashboard_host", LOOPBACK)
    system_config = dict(init_options.pop("_system_config", None) or {})
    if NICENESS_ENV not in os.environ:
        system_config.setdefault("worker_niceness", 0)
    for name, value in QUIET_SYSTEM_CONFIG.items():
        if f"RAY_{name}" not in os.environ:
            system_config.setdefault(name, value)
    init_options["_system_config"] = system_config
    quiet = {name: value for name, value in QUIET_ENV.items() if name not in os.environ}
    _ensure_token()
    try:
        with _scoped_env({MARKER_ENV: ray_id, LOCAL_ONLY_ENV: "0", **quiet,
                          **(process_env or {})}), \
                _local_only_node(), \
                _sigint_ignored():
            ray.init(address=LOCAL, **init_options)
    except BaseException:
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        raise
    _current = LocalRay(ray_id, watchdog)
    return _current


def connect_ray(address: str | None = None, **local_options) -> LocalRay | None:
    """Join `address` (or $RAY_ADDRESS) when one is given; otherwise start a private local
    Ray with `local_options`. Returns the LocalRay when it started one, None when it joined."""
    import ray

    resolved = resolve_ray_address(address)
    if resolved != LOCAL:
        join_options = {k: v for k, v in local_options.items()
                        if k in ("log_to_driver", "logging_level", "configure_logging")}
        if _is_loopback_address(resolved):
            # A Ray on 127.0.0.1 (such as another process's private Ray): this driver's node
            # address must be 127.0.0.1 too, or it waits for a raylet on the host's address.
            with _local_only_node():
                ray.init(address=resolved, **join_options)
        else:
            ray.init(address=resolved, **join_options)
        return None
    return start_local_ray(**local_options)


@contextmanager
def local_ray(**init_options) -> Iterator[LocalRay]:
    """``with local_ray(num_cpus=2): ...``: a private Ray for the block, stopped after it."""
    started = start_local_ray(**init_options)
    try:
        yield started
    finally:
        started.stop()


def _is_loopback_address(address: str) -> bool:
    """Whether a GCS address ("HOST:PORT") names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _ensure_token() -> None:
    """Give this process's Ray a fresh token unless the user chose one (or turned auth off)."""
    mode = os.environ.get(AUTH_MODE_ENV, "").lower()
    if mode == "disabled":
        logger.warning("RAY_AUTH_MODE=disabled: raysight's local Ray runs without token auth "
                       "(it still listens on 127.0.0.1 only)")
        return
    if any(os.environ.get(name) for name in TOKEN_ENVS):
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:  # Ray caches the token it found; make it read the new one
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


@contextmanager
def _scoped_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while Ray starts (its processes inherit them), then restore
    them so that processes this one starts later do not."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _local_only_node() -> Iterator[None]:
    """Make ``ray.init`` pick 127.0.0.1 as the node address.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported; set the constant it
    read for the length of ``ray.init`` too, and restore it so a later ``ray.init(address=...)``
    in this process joins a cluster with the host's real address.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while Ray's processes start, so they inherit SIG_IGN for it.

    Ctrl-C in a terminal signals the whole foreground process group, and Ray's GCS, raylet
    and agents are in this process's group: without this they would die at once, taking the
    requests in flight with them, while this process was still draining them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_watchdog(ray_id: str) -> subprocess.Popen:
    """Start the watchdog for the Ray `ray_id` of this process (raysight/ray_watchdog.py).

    It reads its stdin, a pipe from this process: EOF comes when this process closes it or
    dies, however it dies. Its own session keeps a terminal's Ctrl-C from reaching it."""
    env = {name: value for name, value in os.environ.items() if name != MARKER_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "raysight.ray_watchdog", ray_id, str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True, close_fds=True,
    )
