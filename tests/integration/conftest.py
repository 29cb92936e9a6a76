"""One local Ray instance for the whole integration session (a local ray.init costs ~9 s)."""

from __future__ import annotations

import os
import secrets

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray's token auth stays on. One token for the whole test session, in the environment every
# process the tests start inherits: the session's Ray, a `ray start --head` of a cluster test
# and the drivers, job submitters and servers that join them all present the same token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@pytest.fixture(scope="session")
def ray_session():
    """raysight's private local Ray (raysight/local_ray.py), stopped when the session ends."""
    import ray

    from raysight.local_ray import start_local_ray
    from serve_app.proxy_edge import install

    install()  # as `raysight serve` does before it starts its local Ray
    local = start_local_ray(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    local.stop()
