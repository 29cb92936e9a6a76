"""Job settings, pool sizing and the job command lines, without Ray running."""

from __future__ import annotations

import pytest

from raysight.errors import ConfigError
from raysight.spec import ModelSpec

from batch_jobs.config import job_config_for
from batch_jobs.resources import plan_stages


def caption_job(**options):
    return job_config_for("caption", "builtin:shapes-vlm", "images/", "out/", **options)


def test_two_cpus_leave_room_for_reading_and_writing():
    plan = plan_stages(caption_job(), {"CPU": 2.0})
    assert plan.model_actors == 1 and plan.model_num_gpus == 0
    reserved = (plan.model_actors * plan.model_num_cpus
                + plan.preprocess_actors[1] * plan.preprocess_num_cpus
                + plan.read_num_cpus + plan.write_num_cpus)
    assert reserved <= 2.0  # every stage can hold a task at once: no silent hang


def test_cpu_cluster_gets_one_model_actor_per_four_cpus():
    plan = plan_stages(caption_job(), {"CPU": 16.0})
    assert plan.model_actors == 4 and plan.model_num_cpus == 1.0
    assert plan.preprocess_actors == (1, 8)


def test_gpus_get_one_actor_each_unless_the_spec_says_cpu():
    plan = plan_stages(caption_job(), {"CPU": 8.0, "GPU": 2.0})
    assert plan.model_actors == 2 and plan.model_num_gpus == 1.0
    cpu_spec = ModelSpec(model="builtin:shapes-vlm", device="cpu")
    on_cpu = plan_stages(job_config_for("caption", cpu_spec, "i/", "o/"), {"CPU": 8.0, "GPU": 2.0})
    assert on_cpu.model_num_gpus == 0


def test_model_actors_prepare_their_rows_only_when_their_threads_fill_the_cpus():
    def fused(cluster, **options):
        return plan_stages(caption_job(**options), cluster).preprocess_in_model

    assert fused({"CPU": 2.0}, actor_pool_size=2, torch_threads=1)
    assert not fused({"CPU": 4.0}, actor_pool_size=2, torch_threads=1)  # 2 cores idle
    assert not fused({"CPU": 16.0})  # default threads: half the cores, the stage gets the rest
    assert not fused({"CPU": 8.0, "GPU": 2.0}, torch_threads=8)  # GPU actors keep the stage
    assert fused({"CPU": 16.0}, preprocess_in="model")
    assert not fused({"CPU": 2.0}, actor_pool_size=2, torch_threads=1, preprocess_in="stage")
    plan = plan_stages(caption_job(actor_pool_size=2, torch_threads=1), {"CPU": 2.0})
    assert plan.describe().endswith("preprocess: in the model actors")


def test_fractional_gpus_pack_actors():
    plan = plan_stages(caption_job(num_gpus=0.5), {"CPU": 8.0, "GPU": 1.0})
    assert plan.model_actors == 2 and plan.model_num_gpus == 0.5


@pytest.mark.parametrize(
    ("options", "cluster", "message"),
    [
        ({"actor_pool_size": 2, "model_num_cpus": 1.0}, {"CPU": 2.0}, "wait forever"),
        ({"num_gpus": 1}, {"CPU": 4.0}, "cluster has 0 GPUs"),
        ({"actor_pool_size": 3}, {"CPU": 8.0, "GPU": 2.0}, "need 3 GPUs"),
        ({}, {}, "no CPUs"),
    ],
)
def test_impossible_plans_say_how_to_fix_them(options, cluster, message):
    with pytest.raises(ConfigError, match=message):
        plan_stages(caption_job(**options), cluster)


@pytest.mark.parametrize(
    ("job", "options", "message"),
    [
        ("classify", {}, "needs labels"),
        ("embed", {"prompt": "hi"}, "only apply to the caption job"),
        ("caption", {"labels": ["a"]}, "only apply to the classify job"),
        ("caption", {"batch_size": 0}, "batch_size"),
        ("caption", {"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_job_settings_are_checked(job, options, message):
    with pytest.raises(ConfigError, match=message):
        job_config_for(job, "builtin:shapes-clip", "images/", "out/", **options)


def test_command_line_builds_the_job_config():
    import argparse

    from batch_jobs.cli import add_job_arguments, job_config_from_arguments

    parser = argparse.ArgumentParser()
    add_job_arguments(parser, "classify")
    args = parser.parse_args([
        "--model", "builtin:shapes-clip", "--input", "in/", "--output", "out/",
        "--labels", "a red circle, a blue square", "--actor-pool-size", "2",
        "--num-gpus", "0.5", "--rows-per-file", "10", "--allow-urls", "--max-batch-size", "4",
    ])
    job = job_config_from_arguments("classify", args)
    assert job.labels == ("a red circle", "a blue square")
    assert (job.actor_pool_size, job.num_gpus, job.rows_per_file) == (2, 0.5, 10)
    assert job.spec.images.allow_urls and job.spec.max_batch_size == 4
    assert job.batch_size == 32 and not job.overwrite and job.progress


def test_job_modules_expose_main_and_the_driver_functions():
    import batch_jobs
    from batch_jobs import caption, classify, embed, index

    for module in (caption, embed, classify, index):
        assert callable(module.main)
    for name in ("run_caption", "caption_dataset", "run_embed", "embed_dataset",
                 "run_classify", "classify_dataset", "run_index"):
        assert callable(getattr(batch_jobs, name))
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["--help"])
    assert exit_info.value.code == 0


def test_the_job_registry_is_what_the_commands_and_the_driver_api_read(capsys):
    import importlib

    import batch_jobs
    from batch_jobs.jobs import JOBS
    from raysight.cli import main as raysight_main

    assert list(JOBS) == ["caption", "embed", "classify", "index"]
    for job in JOBS.values():
        module = importlib.import_module(job.module)
        for name in job.exports:
            assert name in batch_jobs.__all__ and getattr(batch_jobs, name) is getattr(module, name)
        with pytest.raises(SystemExit) as exit_info:
            raysight_main(["job", job.name, "--help"])
        printed = " ".join(capsys.readouterr().out.split())
        assert exit_info.value.code == 0 and job.summary in printed
        for flag in job.flags:
            assert flag.name in printed, (job.name, flag.name)
    assert raysight_main(["job", "nothing"]) == 2
    assert "{caption,embed,classify,index}" in capsys.readouterr().err
