"""The stages as plain classes, on tiny random models, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysight.engines import build_engine
from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest
from raysight.spec import ModelSpec

from batch_jobs.codec import decode_prepared, encode_prepared
from batch_jobs.config import job_config_for
from batch_jobs.preprocessor import build_preprocessor
from batch_jobs.stages import ModelStage, PreprocessStage
from tests.conftest import noise_image, png_bytes


def _tensors(prepared) -> dict:
    return prepared.tensors if hasattr(prepared, "tensors") else prepared.inputs.tensors


@pytest.mark.parametrize(
    ("arch", "request_for"),
    [
        ("blip", lambda image: GenerateRequest.from_prompt(None, image)),
        ("blip", lambda image: GenerateRequest.from_prompt("a photo of", image)),
        ("qwen2-vl", lambda image: GenerateRequest.from_prompt("describe", image)),
        ("clip", lambda image: EmbedRequest(image=image)),
        ("clip", lambda image: EmbedRequest(text="a red circle")),
    ],
)
def test_the_weightless_preprocessor_prepares_what_the_engine_prepares(tiny_models, rng, arch, request_for):
    spec = ModelSpec(model=tiny_models[arch])
    image = png_bytes(noise_image(rng, 48, 40))
    weightless = build_preprocessor(spec).preprocess(request_for(image))
    full = build_engine(spec).preprocess(request_for(image))
    # ... and survives the trip between stages unchanged.
    crossed = decode_prepared(encode_prepared(weightless))
    assert set(_tensors(crossed)) == set(_tensors(full))
    for key, value in _tensors(full).items():
        assert torch.equal(_tensors(crossed)[key], value) and _tensors(crossed)[key].dtype == value.dtype
    assert getattr(crossed, "group", None) == getattr(full, "group", None)


def test_the_weightless_engine_refuses_to_run_the_model(tiny_models):
    engine = build_preprocessor(ModelSpec(model=tiny_models["clip"]))
    with pytest.raises(AttributeError, match="without weights"):
        engine.model.get_image_features


def test_caption_stages_give_answers_and_one_error_per_bad_row(tiny_models, rng, tmp_path):
    job = job_config_for("caption", tiny_models["blip"], str(tmp_path), str(tmp_path / "o"),
                         max_new_tokens=3)
    (tmp_path / "on_disk.png").write_bytes(png_bytes(noise_image(rng, 32, 32)))
    stage = PreprocessStage(job, image_root=str(tmp_path))
    in_bytes = pa.table({
        "path": ["a.png", "bad.png", "empty.png"],
        "image": [png_bytes(noise_image(rng, 32, 32)), b"not an image", b""],
    })
    as_paths = pa.table({"path": ["on_disk", "missing"], "image": ["on_disk.png", "nowhere.png"]})
    prepared = pa.concat_tables([stage(in_bytes), stage(as_paths)])
    assert prepared.column_names == ["path", "prepared", "error", "error_type"]
    assert prepared["error_type"].to_pylist() == [None, "NotAnImage", "EmptyImage", None, "ImageError"]
    assert "not found" in prepared["error"][4].as_py()

    out = ModelStage(job)(prepared)
    assert out.column_names == ["path", "text", "finish_reason", "error", "error_type"]
    texts = out["text"].to_pylist()
    assert texts[0] and texts[3] and texts[1] is None and texts[2] is None
    engine = build_engine(job.spec)
    alone = engine.run([GenerateRequest.from_prompt(None, in_bytes["image"][0].as_py(), max_new_tokens=3)])
    assert texts[0] == alone[0].text  # same answer as the online engine


def test_classify_and_embed_stage_columns(tiny_models, rng):
    image = png_bytes(noise_image(rng, 32, 32))
    batch = pa.table({"id": ["x", "y"], "image": [image, None], "text": [None, "a red circle"]})
    embed = job_config_for("embed", tiny_models["clip"], "in", "out")
    out = ModelStage(embed)(PreprocessStage(embed)(batch))
    assert out["kind"].to_pylist() == ["image", "text"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32())
    vectors = np.array(out["embedding"].to_pylist())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    labels = ("a red circle", "a cat", "hello")
    classify = job_config_for("classify", tiny_models["clip"], "in", "out", labels=labels)
    out = ModelStage(classify)(PreprocessStage(classify)(batch))
    first, second = out.to_pylist()
    assert first["label"] in labels and abs(sum(first["probs"]) - 1) < 1e-5
    assert first["score"] == pytest.approx(max(first["probs"]))
    assert second["label"] is None and second["error_type"] == "InvalidRequest"


def test_a_model_stage_that_prepares_its_rows_answers_as_the_two_stages_do(tiny_models, rng,
                                                                          tmp_path):
    """`preprocess_in: model` (no CPU stage): the same vectors, the same failed rows."""
    (tmp_path / "a.png").write_bytes(png_bytes(noise_image(rng, 40, 24)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    batch = pa.table({"id": ["a", "b", "c"], "image": ["a.png", "broken.png", "missing.png"]})
    job = job_config_for("embed", tiny_models["clip"], "in", "out")
    two_stages = ModelStage(job)(PreprocessStage(job, image_root=str(tmp_path))(batch))
    fused = ModelStage(job, prepare_rows=True, image_root=str(tmp_path))(batch)
    assert fused.column_names == two_stages.column_names
    assert fused["embedding"].to_pylist()[0] == two_stages["embedding"].to_pylist()[0]
    assert fused["error"].to_pylist() == two_stages["error"].to_pylist()
    assert fused["error_type"].to_pylist() == two_stages["error_type"].to_pylist()
    assert fused["error_type"].to_pylist()[1:] == ["NotAnImage", "ImageError"]


def test_a_job_refuses_a_model_of_the_wrong_kind(tiny_models):
    from raysight.errors import ConfigError

    job = job_config_for("caption", tiny_models["clip"], "in", "out")
    with pytest.raises(ConfigError, match="needs a generative model"):
        PreprocessStage(job)


def test_urls_data_urls_and_oversize_images_follow_the_spec_policy(tiny_models, rng, tmp_path):
    import base64

    small = png_bytes(noise_image(rng, 32, 32))
    big = png_bytes(noise_image(rng, 200, 200))
    (tmp_path / "big.png").write_bytes(big)
    spec = {"model": tiny_models["clip"], "images": {"max_image_bytes": len(big) - 1}}
    job = job_config_for("embed", spec, str(tmp_path), None)
    batch = pa.table({"id": ["url", "data", "big-file"], "image": [
        "https://example.com/a.png",
        "data:image/png;base64," + base64.b64encode(small).decode(),
        "big.png",
    ]})
    out = PreprocessStage(job, image_root=str(tmp_path))(batch).to_pylist()
    assert out[0]["error_type"] == "URLRefused" and "images.allow_urls" in out[0]["error"]
    assert out[1]["error"] is None and out[1]["prepared"]
    assert out[2]["error_type"] == "ImageTooLarge" and "images.max_image_bytes" in out[2]["error"]
    in_bytes = PreprocessStage(job)(pa.table({"id": ["b"], "image": [big]})).to_pylist()
    assert in_bytes[0]["error_type"] == "ImageTooLarge"


def test_an_engine_bug_fails_its_row_with_an_internal_error_and_an_id(tiny_models, caplog):
    job = job_config_for("embed", tiny_models["clip"], "in", "out")
    batch = pa.table({"id": ["a", "b", "c"], "image": [None] * 3, "text": ["x", "y", "z"]})
    stage = ModelStage(job)
    shape_answer, calls = stage.engine.postprocess, []

    def postprocess(output):  # the second row's answer breaks with a library's own words
        calls.append(output)
        if len(calls) == 2:
            raise ValueError("secret detail of a library")
        return shape_answer(output)

    stage.engine.postprocess = postprocess
    rows = stage(PreprocessStage(job)(batch)).to_pylist()
    assert [row["error_type"] for row in rows] == [None, "InternalError", None]
    assert rows[0]["embedding"] and rows[2]["embedding"] and rows[1]["embedding"] is None
    error = rows[1]["error"]
    assert error.startswith("internal error; error id ") and "secret" not in error
    error_id = error.split("error id ")[1].split()[0]
    assert f"error id {error_id}" in caplog.text and "secret detail of a library" in caplog.text
