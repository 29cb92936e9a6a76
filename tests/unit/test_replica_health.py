"""ModelServer.check_health, the hook Serve calls every few seconds: it passes while the model
thread keeps up, and fails (so Serve replaces the replica) once one batch has held the model
thread past the deployment's ``stuck_batch_s``, or once the model thread is gone. No Ray: the
server is driven in-process with an engine whose batch blocks until the test releases it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from raysight.spec import ModelSpec
from serve_app.config import ServedModel
from serve_app.deployment import DEFAULT_STUCK_BATCH_S, ModelServer, ModelStuck


class BlockingEngine:
    """An embed engine whose every batch waits for `release` (a wedged forward, a deadlock)."""

    task = "embed"
    model = None

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()

    def preprocess_safely(self, request):
        return request

    def infer_and_postprocess(self, prepared):
        self.started.set()
        self.release.wait(30)
        return [f"vector of {item}" for item in prepared]


def _server(stuck_batch_s: float) -> tuple[ModelServer, BlockingEngine]:
    engine = BlockingEngine()
    spec = ModelSpec(model="builtin:shapes-clip", batch_wait_timeout_s=0)
    return ModelServer(spec, engine=engine, stuck_batch_s=stuck_batch_s), engine


def test_check_health_fails_while_one_batch_holds_the_model_thread_past_the_bound():
    server, engine = _server(stuck_batch_s=0.3)

    async def scenario():
        server.check_health()  # idle: healthy
        answer = asyncio.ensure_future(server.embed(["a"]))
        assert await asyncio.to_thread(engine.started.wait, 5)
        server.check_health()  # running, but within the bound
        await asyncio.sleep(0.5)
        with pytest.raises(ModelStuck, match=r"one batch has been running for \d+s, over the "
                                             r"0.3s bound \(deployment.stuck_batch_s\)"):
            server.check_health()
        engine.release.set()  # the batch ends after all: healthy again, and it was answered
        [served] = await answer
        server.check_health()
        return served

    served = asyncio.run(scenario())
    assert served.result == "vector of a" and served.batch_size == 1


def test_check_health_fails_once_the_model_thread_is_gone():
    server, engine = _server(stuck_batch_s=60)
    engine.release.set()

    async def scenario():
        [served] = await server.embed(["a"])
        assert served.result == "vector of a"
        server.check_health()
        server.batcher.close()  # the model thread is shut down: nothing queued would run
        with pytest.raises(ModelStuck, match="the batcher is closed"):
            server.check_health()

    asyncio.run(scenario())


def test_the_bound_is_a_deployment_setting_with_a_default():
    spec = ModelSpec(model="builtin:shapes-clip")
    assert ServedModel(spec=spec).deployment.stuck_batch_s == DEFAULT_STUCK_BATCH_S == 300
    served = ServedModel.model_validate({"model": "builtin:shapes-clip",
                                         "deployment": {"stuck_batch_s": 45}})
    assert served.deployment.stuck_batch_s == 45
    with pytest.raises(ValueError, match="stuck_batch_s"):
        ServedModel.model_validate({"model": "builtin:shapes-clip",
                                    "deployment": {"stuck_batch_s": 0}})


def test_serve_checks_each_replica_every_health_check_period_s():
    # The period also bounds how long Serve takes to notice a replica that died (and start
    # its successor): Serve's own default is 10 s.
    from serve_app.app import model_deployment

    def period(**deployment) -> float:
        served = ServedModel(spec=ModelSpec(model="builtin:shapes-clip"), deployment=deployment)
        return model_deployment(served)._deployment_config.health_check_period_s

    assert period() == 1.0
    assert period(health_check_period_s=5) == 5.0
    with pytest.raises(ValueError, match="health_check_period_s"):
        ServedModel(spec=ModelSpec(model="builtin:shapes-clip"),
                    deployment={"health_check_period_s": 0})
