"""Fixtures every test layer shares: tiny random models of real architectures, built
offline once per session."""

from __future__ import annotations

import os
import sys

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")



def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # a test that never imported Ray cannot have started it
    return ray is not None and ray.is_initialized()


def _refuse_ray_outside_integration(item):
    """Run one phase of a test; fail it if it started Ray without the integration marker,
    so `pytest -m "not integration"` is sure to run without Ray."""
    running_before = _ray_running()
    result = yield
    if not running_before and _ray_running() and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} started Ray but is not marked integration; add "
                    "`pytestmark = pytest.mark.integration` to its module")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _refuse_ray_outside_integration(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _refuse_ray_outside_integration(item))


ARCHITECTURES = ("qwen2-vl", "qwen2.5-vl", "llava", "blip", "clip", "siglip", "siglip2")
GENERATIVE = ("qwen2-vl", "qwen2.5-vl", "llava", "blip")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Architecture name -> folder of a tiny randomly initialised model with its processor."""
    from tests.fixtures.random_models import build_random_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: str(build_random_model(arch, root / arch)) for arch in ARCHITECTURES}


@pytest.fixture()
def rng():
    import numpy as np

    return np.random.default_rng(1234)


def noise_image(rng, width: int, height: int):
    """A random RGB image: every pixel differs, so different images give different answers."""
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype="uint8"))


def png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
