"""ModelSpec: one frozen, documented source of settings; bad settings say how to fix them."""

from __future__ import annotations

import pydantic
import pytest

from raysight.errors import ConfigError, UnknownModel
from raysight.spec import ImageInputPolicy, ModelSpec


def test_defaults_and_served_name():
    spec = ModelSpec(model="Qwen/Qwen2.5-VL-3B-Instruct")
    assert spec.served_name == "Qwen2.5-VL-3B-Instruct"
    assert ModelSpec(model="builtin:shapes-vlm").served_name == "shapes-vlm"
    assert ModelSpec(model="x/y", name="chat").served_name == "chat"
    assert spec.dtype == "auto" and spec.device == "auto" and spec.trust_remote_code is False
    assert spec.generation.temperature == 0.0


def test_spec_is_frozen_and_forbids_unknown_fields():
    spec = ModelSpec(model="m")
    with pytest.raises(pydantic.ValidationError):
        spec.model = "other"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="max_batch"):
        ModelSpec.from_mapping({"model": "m", "max_batch": 4})


def test_every_field_is_documented():
    for model in (ModelSpec, ImageInputPolicy):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert undocumented == [], f"{model.__name__}: {undocumented}"


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_known_devices(device):
    assert ModelSpec(model="m", device=device).device == device


def test_bad_device_says_what_is_allowed():
    with pytest.raises(ConfigError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        ModelSpec.from_mapping({"model": "m", "device": "gpu0"})


def test_local_paths_need_a_root():
    with pytest.raises(pydantic.ValidationError, match="local_path_root"):
        ImageInputPolicy(allow_local_paths=True)


def test_from_yaml(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "model: Qwen/Qwen2.5-VL-7B-Instruct\ndtype: bfloat16\ndevice: cuda\n"
        "max_batch_size: 16\ngeneration:\n  max_new_tokens: 128\n"
        "images:\n  max_images_per_request: 2\n"
    )
    spec = ModelSpec.from_yaml(path)
    assert spec.dtype == "bfloat16" and spec.max_batch_size == 16
    assert spec.generation.max_new_tokens == 128 and spec.images.max_images_per_request == 2


def test_yaml_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ModelSpec.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        ModelSpec.from_yaml(bad)


def test_unknown_local_model_is_a_clear_error(tmp_path):
    from raysight.loading import load_model

    with pytest.raises(UnknownModel, match="cannot load a model config"):
        load_model(ModelSpec(model=str(tmp_path / "nowhere")))


def test_task_is_inferred_from_the_config(tiny_models):
    from raysight.loading import load_model

    assert load_model(ModelSpec(model=tiny_models["clip"])).task == "embed"
    loaded = load_model(ModelSpec(model=tiny_models["qwen2.5-vl"]))
    assert loaded.task == "generate" and loaded.family.name == "qwen2-vl"
    assert loaded.device == "cpu" and str(loaded.dtype) == "torch.float32"
    assert not loaded.model.training


def test_dtype_is_honoured(tiny_models):
    from raysight.loading import load_model

    loaded = load_model(ModelSpec(model=tiny_models["llava"], dtype="bfloat16"))
    assert next(loaded.model.parameters()).dtype.__str__() == "torch.bfloat16"


def test_embed_task_on_a_generative_model_is_refused(tiny_models):
    from raysight.errors import UnsupportedModel
    from raysight.loading import load_model

    with pytest.raises(UnsupportedModel, match="task 'embed' supports"):
        load_model(ModelSpec(model=tiny_models["blip"], task="embed"))


def test_cuda_asked_for_without_cuda(tiny_models):
    import torch

    from raysight.loading import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model(ModelSpec(model=tiny_models["clip"], device="cuda"))
