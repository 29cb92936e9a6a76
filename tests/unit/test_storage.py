"""Locations in object storage: opened through pyarrow, shown without credentials."""

from __future__ import annotations

import pytest

from raysight.errors import ConfigError
from raysight.index import VectorIndex
from raysight.storage import join, open_filesystem, read_bytes, redact, write_bytes


def test_user_info_in_a_uri_is_hidden():
    assert redact("cannot open 's3://AKIA123:sEcReT@bucket/x'") == "cannot open 's3://***@bucket/x'"
    assert redact("/data/plain/path") == "/data/plain/path"


def test_credential_variables_are_cut_from_any_message(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-token-token")
    text = "signature for very-secret-value failed (token-token-token)"
    assert redact(text) == "signature for *** failed (***)"


def test_a_bad_uri_is_a_config_error_without_the_secret():
    with pytest.raises(ConfigError) as raised:
        open_filesystem("s3://KEYID:topsecret99@bucket/x?bogus_option=1")
    assert "topsecret99" not in raised.value.message and "s3://***@bucket" in raised.value.message


def test_local_files_go_through_the_same_calls(tmp_path):
    target = join(str(tmp_path / "deep" / "er"), "file.bin")
    write_bytes(target, b"abc")
    assert read_bytes(target) == b"abc"
    with pytest.raises(FileNotFoundError):
        read_bytes(join(str(tmp_path), "missing.bin"))


def test_an_index_round_trips_through_bytes_and_a_missing_one_is_explained(tmp_path):
    import numpy as np

    index = VectorIndex.build(np.eye(3, dtype="float32"), ["a", "b", "c"])
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert [hit.id for hit in loaded.search(np.array([0, 1, 0]), k=1)[0]] == ["b"]
    with pytest.raises(ConfigError, match="missing index.faiss, ids.json, meta.json"):
        VectorIndex.load(tmp_path / "nothing-here")
