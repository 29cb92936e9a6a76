"""Relative paths in configs are made absolute where they are written, so Ray workers and
Serve replicas (each in its own working folder) open the same files."""

from __future__ import annotations

from batch_jobs.config import job_config_for
from raysight.spec import ModelSpec
from serve_app.config import IndexConfig


def test_job_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = job_config_for("embed", "builtin:shapes-clip", "photos/**/*.jpg", "out",
                         image_root="../pictures")
    assert job.input == f"{tmp_path}/photos/**/*.jpg"
    assert job.output == f"{tmp_path}/out"
    assert job.image_root == str(tmp_path.parent / "pictures")
    remote = job_config_for("embed", "builtin:shapes-clip", "s3://bucket/photos", "gs://b/out")
    assert (remote.input, remote.output) == ("s3://bucket/photos", "gs://b/out")


def test_a_relative_model_folder_becomes_absolute_but_hub_ids_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert ModelSpec(model="models/mine").model == str(tmp_path / "models" / "mine")
    assert ModelSpec(model="models/mine").served_name == "mine"
    assert ModelSpec(model="Qwen/Qwen2-VL-2B-Instruct").model == "Qwen/Qwen2-VL-2B-Instruct"
    assert ModelSpec(model="builtin:shapes-vlm").model == "builtin:shapes-vlm"


def test_index_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index = IndexConfig(path="shapes-index")
    assert index.path == str(tmp_path / "shapes-index")
    assert index.index_name == "shapes-index"
