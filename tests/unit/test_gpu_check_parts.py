"""The GPU check's parts that run anywhere: building a model in bfloat16, the GPU-busy
sampler and which packages the device bundle ships."""

from __future__ import annotations

import itertools
import time

import pytest


def test_a_model_built_in_bfloat16_saves_bfloat16_and_restores_torch_defaults(tmp_path):
    import torch
    from safetensors import safe_open

    from raysight.engines import build_engine
    from raysight.spec import ModelSpec
    from tests.fixtures.random_models import build_random_model

    folder = build_random_model("qwen2-vl", tmp_path / "qwen", dtype="bfloat16")
    assert torch.get_default_dtype() == torch.float32
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"BF16"}
    engine = build_engine(ModelSpec(model=str(folder), dtype="float16", device="cpu"))
    assert {p.dtype for p in engine.model.parameters()} == {torch.float16}


def test_gpu_busy_averages_its_samples_and_has_no_figure_without_a_reader():
    from bench.gpu_check.gpu_busy import GpuBusy

    readings = itertools.cycle([20.0, 40.0])
    with GpuBusy(lambda: next(readings)) as busy:
        deadline = time.monotonic() + 10  # a busy shared machine may delay the sampler
        while len(busy.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(busy.samples) >= 3
    assert 20.0 <= busy.percent <= 40.0
    with GpuBusy(None) as idle:
        time.sleep(0.15)
    assert idle.percent is None


def test_bundle_ships_what_the_target_lacks_and_never_torch():
    from bench.gpu_check.bundle import wanted

    freeze = ["# Editable install with no remote (raysight==0.1.0)", "-e /work/raysight",
              "ray==2.60.0", "torch==2.13.0", "numpy==2.3.0", "transformers==5.23.0",
              "Pydantic_Core==2.50.5", "pytest==8.4.0", "nvidia-cublas==13.0"]
    have = {"numpy", "transformers", "torch"}
    assert wanted(freeze, have) == ["ray==2.60.0", "transformers==5.23.0", "Pydantic_Core==2.50.5"]


def test_bundle_leaves_out_the_dev_tools_and_takes_pins_for_the_target():
    from bench.gpu_check.bundle import parse_pins, wanted

    freeze = ["playwright==1.65.2", "greenlet==3.5.6", "moto==5.2.5", "boto3==1.44.8",
              "schemathesis==4.32.5", "grpcio-reflection==1.85.1",
              "fastapi-standalone-docs==0.3.0"]
    pins = parse_pins(["grpcio_reflection==1.84.0"])
    assert pins == {"grpcio-reflection": "1.84.0"}
    # The image's grpcio is 1.84.0; reflection 1.85.1 refuses to import on it.
    assert wanted(freeze, set(), pins) == ["grpcio-reflection==1.84.0",
                                           "fastapi-standalone-docs==0.3.0"]
    with pytest.raises(SystemExit, match="NAME==VERSION"):
        parse_pins(["grpcio-reflection"])
