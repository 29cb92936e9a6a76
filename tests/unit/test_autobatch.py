"""`max_batch_size: auto` (raysight/autobatch.py): the pick, the sweep on a tiny model, the
cache that spares the next start its sweep, and where the pick is shown (/v1/models)."""

from __future__ import annotations

import json

import pytest

from raysight.autobatch import pick_size, sweep_sizes
from raysight.errors import ConfigError
from raysight.spec import ModelSpec
from serve_app.config import ServeConfig


def test_the_pick_is_the_smallest_size_within_the_tolerance_of_the_best():
    rates = {1: 10.0, 2: 18.0, 4: 30.0, 8: 31.0, 16: 31.5, 32: 29.0}
    assert pick_size(rates, 0.03) == 8  # 31.0 >= 0.97 * 31.5
    assert pick_size(rates, 0.0) == 16
    assert pick_size(rates, 0.5) == 2
    assert sweep_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert sweep_sizes(12) == [1, 2, 4, 8, 12]
    assert sweep_sizes(1) == [1]


@pytest.mark.parametrize("value", [0, -3, "big", 2.5, True])
def test_a_wrong_max_batch_size_is_explained(value):
    with pytest.raises(ConfigError, match="whole number above 0 or 'auto'"):
        ModelSpec.from_mapping({"model": "m", "max_batch_size": value})


def test_a_job_takes_auto_or_a_positive_batch_size():
    from batch_jobs.config import job_config_for

    assert job_config_for("embed", "m", "/in", batch_size="auto").batch_size == "auto"
    assert job_config_for("embed", "m", "/in", batch_size="12").batch_size == 12
    for wrong in ("big", 0):
        with pytest.raises(ConfigError, match="batch_size must be a whole number above 0"):
            job_config_for("embed", "m", "/in", batch_size=wrong)


def test_auto_sizes_the_replica_queue_for_the_largest_swept_batch():
    spec = ModelSpec(model="m", max_batch_size="auto", auto_batch={"max_size": 40})
    assert spec.batch_limit == 40
    assert ServeConfig.for_specs([spec]).models[0].max_ongoing_requests == 80
    assert ModelSpec.from_mapping({"model": "m", "max_batch_size": "12"}).max_batch_size == 12


@pytest.fixture()
def auto_spec(tiny_models, tmp_path) -> ModelSpec:
    return ModelSpec(model=tiny_models["clip"], max_batch_size="auto",
                     auto_batch={"max_size": 4, "budget_s": 1.5,
                                 "cache_file": str(tmp_path / "sizes.json")})


def test_auto_sweeps_once_then_reads_the_cache(auto_spec):
    from raysight.autobatch import cached_choice
    from raysight.engines import build_engine

    assert cached_choice(auto_spec) is None  # nothing cached yet
    first = build_engine(auto_spec)
    choice = first.batch_choice
    assert not choice.from_cache and choice.throughput and 1 in choice.throughput
    assert set(choice.throughput) <= {1, 2, 4}
    assert first.spec.max_batch_size == choice.size
    # The pick is within the tolerance of the best median (narrowed by the noise, so not
    # always the smallest such size); every median is of at least one sample.
    assert choice.size in choice.throughput
    assert choice.throughput[choice.size] >= 0.97 * max(choice.throughput.values())
    assert set(choice.samples) == set(choice.throughput) and min(choice.samples.values()) >= 1
    cached = json.loads(open(auto_spec.auto_batch.cache_file, encoding="utf-8").read())
    (key, entry), = cached.items()
    assert entry["size"] == choice.size and json.loads(key)["task"] == "embed"
    assert json.loads(key)["dtype"] == "float32" and json.loads(key)["device"].startswith("cpu:")

    second = build_engine(auto_spec)
    assert second.batch_choice.from_cache and second.batch_choice.throughput == {}
    assert second.spec.max_batch_size == choice.size
    # The look-up without a model load (a job's, before its pipeline) finds the same entry.
    peeked = cached_choice(auto_spec)
    assert peeked == second.batch_choice and peeked.size == choice.size
    assert cached_choice(auto_spec.model_copy(update={"dtype": "bfloat16"})) is None
    # The sweep's noise images left nothing in the vision cache it turned off.
    assert first.caches.vision is None or len(first.caches.vision) == 0
    # Another dtype is another device setting: a sweep of its own.
    other = build_engine(auto_spec.model_copy(update={"dtype": "bfloat16"}))
    assert not other.batch_choice.from_cache
    assert len(json.loads(open(auto_spec.auto_batch.cache_file).read())) == 2


def test_v1_models_shows_the_pick(auto_spec):
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    config = ServeConfig.for_specs([auto_spec], api_key="k")
    server = ModelServer(auto_spec)
    assert server.batcher.max_batch_size == server.spec.max_batch_size  # the pick, an int
    gateway = Gateway(config, {auto_spec.served_name: LocalClient(server)})
    with TestClient(build_http_api(gateway), headers={"Authorization": "Bearer k"}) as client:
        card, = client.get("/v1/models").json()["data"]
    assert card["max_batch_size"] == server.spec.max_batch_size
    auto = card["max_batch_size_auto"]
    assert auto["size"] == card["max_batch_size"] and "device" in auto
    assert set(auto) >= {"from_cache", "throughput", "seconds", "stopped"}
