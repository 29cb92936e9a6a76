"""Which Ray a command uses: --address, else RAY_ADDRESS, else a private local one."""

from __future__ import annotations

import argparse

from batch_jobs.cli import add_job_arguments
from raysight.local_ray import resolve_ray_address
from serve_app.launch import build_parser


def test_serve_uses_the_flag_then_ray_address_then_a_private_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_ray_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_ray_address(None) == "10.0.0.5:6379"
    assert resolve_ray_address("auto") == "auto"
    assert build_parser().parse_args(["--model", "m"]).address is None


def test_jobs_take_address_and_keep_ray_address_as_an_alias():
    parser = argparse.ArgumentParser()
    add_job_arguments(parser, "embed")
    base = ["--model", "m", "--input", "i", "--output", "o"]
    assert parser.parse_args([*base, "--address", "auto"]).ray_address == "auto"
    assert parser.parse_args([*base, "--ray-address", "h:6379"]).ray_address == "h:6379"
    assert parser.parse_args(base).ray_address is None  # Ray then reads RAY_ADDRESS itself
