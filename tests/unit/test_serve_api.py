"""The serve config and the HTTP contract without Ray: the FastAPI app over in-process
ModelServers (built-in models), the CLI flags, the example Serve config."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from raysight.errors import ConfigError
from raysight.spec import ModelSpec
from serve_app.config import ServeConfig
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HAVE_BUILTIN = (ROOT / "raysight/builtin/models/shapes-vlm/model.safetensors").is_file()


# --- config ----------------------------------------------------------------------------------------


def test_models_are_written_flat_with_a_deployment_block():
    config = ServeConfig.from_mapping({"models": [
        {"model": "builtin:shapes-vlm", "max_batch_size": 16, "deployment": {"num_gpus": 0.5}},
        {"model": "builtin:shapes-clip", "name": "clip"},
    ]})
    vlm, clip = config.models
    assert (vlm.name, vlm.spec.max_batch_size, vlm.deployment.num_gpus) == ("shapes-vlm", 16, 0.5)
    assert vlm.max_ongoing_requests == 32  # room for a full batch forming while one runs
    assert vlm.deployment.ray_actor_options() == {
        "num_cpus": 1.0, "num_gpus": 0.5, "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    assert clip.name == "clip" and config.host == "127.0.0.1"
    assert config.max_body_bytes == 20 * 1024 * 1024


@pytest.mark.parametrize("models, extra, message", [
    ([{"model": "a", "max_batch_size": 8, "deployment": {"max_ongoing_requests": 5}}], {},
     "could never fill a batch"),
    ([{"model": "org/a"}, {"model": "other/a"}], {}, "distinct `name`"),
    ([{"model": "a"}], {"indexes": [{"path": "/x", "model": "b"}]}, "not served"),
    ([{"model": "a", "deployment": {"replicas": 2}}], {}, "replicas"),
    ([], {}, "models"),
    ([{"model": "a"}], {"ingress": {"num_replicas": 2, "num_cpus": 0.5}},
     r"ingress\.num_cpus, ingress\.num_replicas only apply to a separate ingress.*"
     r"ingress\.separate: true"),
    ([{"model": "a"}, {"model": "b"}], {"ingress": {"direct": True}},
     r"ingress\.direct serves one model.*serve one model, or drop ingress\.direct"),
    ([{"model": "a", "deployment": {"num_replicas": 2}}], {"ingress": {"direct": True}},
     r"needs deployment\.num_replicas 1 and no autoscaling_config"),
    ([{"model": "a", "deployment": {"autoscaling_config": {"max_replicas": 2}}}],
     {"ingress": {"direct": True}}, r"needs deployment\.num_replicas 1"),
])
def test_config_mistakes_are_explained(models, extra, message):
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_mapping({"models": models, **extra})


@pytest.mark.parametrize("models, ingress", [
    ([{"model": "a"}], {"separate": True, "num_replicas": 2}),
    ([{"model": "a"}, {"model": "b"}], {"num_replicas": 2}),
    ([{"model": "a"}], {"num_replicas": 1, "separate": False}),  # a default, written out
])
def test_ingress_options_are_taken_where_an_ingress_runs(models, ingress):
    config = ServeConfig.from_mapping({"models": models, "ingress": ingress})
    assert config.ingress.num_replicas == ingress["num_replicas"]


def test_the_example_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((ROOT / "serve_app/config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    assert schema.http_options.host == "127.0.0.1"
    [application] = data["applications"]
    assert application["import_path"] == "serve_app.app:app_builder"
    config = ServeConfig.from_mapping(application["args"])
    models = [served.spec.model for served in config.models]
    assert models == ["builtin:shapes-vlm", "builtin:shapes-clip"]


def test_serve_command_flags_build_the_config(tmp_path):
    from serve_app.launch import build_parser, config_from_arguments

    args = build_parser().parse_args([
        "--model", "builtin:shapes-vlm", "--model", "builtin:shapes-clip", "--port", "9001",
        "--index", str(tmp_path), "--max-batch-size", "4", "--api-key", "k",
    ])
    config = config_from_arguments(args)
    assert [served.name for served in config.models] == ["shapes-vlm", "shapes-clip"]
    assert {served.spec.max_batch_size for served in config.models} == {4}
    assert (config.port, config.host, config.api_key) == (9001, "127.0.0.1", "k")
    assert config.indexes[0].index_name == tmp_path.name


# --- HTTP contract ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http():
    if not HAVE_BUILTIN:
        pytest.skip("the built-in models are not built")
    from fastapi.testclient import TestClient

    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    specs = [ModelSpec(model="builtin:shapes-vlm"), ModelSpec(model="builtin:shapes-clip")]
    config = ServeConfig.for_specs(specs, api_key="k", max_body_bytes=100_000)
    gateway = Gateway(config, {spec.served_name: LocalClient(ModelServer(spec)) for spec in specs})
    with TestClient(build_http_api(gateway), headers={"Authorization": "Bearer k"}) as client:
        yield client


@pytest.fixture(scope="module")
def shape():
    from raysight.shapes import make_shapes

    image, label = make_shapes(1, seed=21)[0]
    return base64.b64encode(png_bytes(image)).decode(), label


def test_predict_and_its_flat_errors(http, shape):
    image, label = shape
    answer = http.post("/predict", json={"prompt": "What color is the shape?", "image": image})
    assert answer.json() == {"output": label.color}
    assert answer.headers["X-Raysight-Batch-Size"] == "1"
    # Server-Timing (W3C): the wait for the batch and the batch's run on the model, in ms.
    timing = dict(metric.split(";")[:2] for metric in answer.headers["Server-Timing"].split(", "))
    assert set(timing) == {"queue", "model"}
    queue_ms, model_ms = (float(timing[name].removeprefix("dur=")) for name in ("queue", "model"))
    assert queue_ms >= 0 and model_ms > 0  # the model ran its answer
    missing = http.post("/predict", json={"image": image})
    assert missing.status_code == 400 and "missing prompt" in missing.json()["error"]


def test_errors_elsewhere_have_the_openai_shape(http):
    response = http.post("/v1/embeddings", json={"model": "shapes-clip", "input": [[1, 2]]})
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "token-id inputs are not supported; send "
                                         "text or images", "type": "invalid_request_error",
                                         "code": "invalid_request"}}
    unknown = http.get("/v2/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_key_size_and_health(http):
    assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert http.get("/healthz", headers={"Authorization": ""}).status_code == 200
    for path in ("/healthz", "/readyz"):  # a load balancer's HEAD probe: no key, no body
        probe = http.head(path, headers={"Authorization": ""})
        assert probe.status_code == 200 and probe.content == b""
    too_big = http.post("/v1/embeddings", content=json.dumps({"input": "x" * 200_000}))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


def test_stream_events_end_with_done(http, shape):
    image, label = shape
    body = {"stream": True, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert label.color in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["raysight"] == {"batch_size": 1}  # a stream's batch, on its last chunk



def test_direct_ingress_is_refused_before_joining_a_cluster(capsys):
    from serve_app.launch import serve_command

    # Nothing listens on port 1: the refusal must come before any attempt to connect.
    code = serve_command(["--model", "builtin:shapes-clip", "--direct-ingress",
                          "--address", "127.0.0.1:1"])
    assert code == 2
    assert "--direct-ingress (ingress.direct) needs raysight's private local Ray" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("models, ingress, private, expected", [
    ([{"model": "a"}], {}, True, True),  # `raysight serve --model a`: the relay path
    ([{"model": "a"}], {}, False, False),  # a joined cluster: Serve's proxy
    ([{"model": "a"}, {"model": "b"}], {}, True, False),  # an ingress deployment
    ([{"model": "a"}], {"separate": True}, True, False),
    ([{"model": "a", "deployment": {"num_replicas": 2}}], {}, True, False),
    ([{"model": "a", "deployment": {"autoscaling_config": {"min_replicas": 1,
                                                          "max_replicas": 2}}}], {}, True, False),
    ([{"model": "a"}], {"direct": False}, True, False),
    ([{"model": "a"}], {"direct": True}, True, True),
])
def test_direct_ingress_auto_is_direct_for_one_replica_on_a_private_ray(
        models, ingress, private, expected):
    from serve_app.config import ServeConfig

    config = ServeConfig.from_mapping({"models": models, "ingress": ingress})
    assert config.ingress.direct == ingress.get("direct", "auto")
    assert config.with_direct_ingress_resolved(private).ingress.direct is expected


@pytest.mark.parametrize("flags, expected", [
    ([], "auto"), (["--direct-ingress"], True), (["--no-direct-ingress"], False)])
def test_the_direct_ingress_flags(flags, expected):
    from serve_app.launch import build_parser, config_from_arguments

    args = build_parser().parse_args(["--model", "builtin:shapes-clip", *flags])
    assert config_from_arguments(args).ingress.direct == expected


def test_a_taken_port_is_refused_before_ray_starts(capsys):
    import socket
    import time

    from serve_app.launch import serve_command

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        began = time.monotonic()
        code = serve_command(["--model", "builtin:shapes-clip", "--direct-ingress",
                              "--port", str(port)])
    assert code == 2 and time.monotonic() - began < 5  # no Ray, no model load
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
