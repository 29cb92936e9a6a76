"""Placement, decided before anything starts, on simulated clusters (no GPU, no Ray)."""

from __future__ import annotations

import pytest

from batch_jobs.config import job_config_for
from batch_jobs.resources import model_actor_nodes, plan_job_on_nodes
from raysight.errors import PlacementError
from raysight.placement import (
    ActorShape,
    ClusterNode,
    ReplicaRequest,
    max_actors,
    nodes_from_ray,
    place_actors,
    plan_replicas,
    replicas_per_gpu,
)
from raysight.spec import ModelSpec
from serve_app.config import ServeConfig
from serve_app.placement import (check_placement, most_replicas, plan_serve_placement,
                                  starting_replicas)


def gpu_nodes(count: int, gpus: float, cpus: float = 16) -> list[ClusterNode]:
    return [ClusterNode(f"gpu-{i}", cpus=cpus, gpus=gpus) for i in range(count)]


def serve_config(**deployment) -> ServeConfig:
    return ServeConfig.from_mapping({"models": [
        {"model": "builtin:shapes-clip", "device": "cuda", "deployment": deployment}]})


def test_three_nodes_of_four_gpus_hold_twelve_one_gpu_actors_three_per_gpu_node_pair():
    nodes = gpu_nodes(3, 4)
    shape = ActorShape(num_cpus=1, num_gpus=1)
    assert max_actors(nodes, shape) == 12
    placed = place_actors(nodes, shape, 12)
    assert {name: placed.count(name) for name in placed} == {"gpu-0": 4, "gpu-1": 4, "gpu-2": 4}


def test_actors_are_spread_over_nodes_before_any_node_gets_a_second():
    assert place_actors(gpu_nodes(3, 4), ActorShape(num_gpus=1), 3) == ["gpu-0", "gpu-1", "gpu-2"]


def test_a_thirteenth_one_gpu_actor_is_refused_with_what_the_cluster_has():
    with pytest.raises(PlacementError) as raised:
        place_actors(gpu_nodes(3, 4), ActorShape(num_cpus=1, num_gpus=1), 13)
    message = raised.value.message
    assert "13 actor(s) of 1 CPU + 1 GPU do not fit" in message
    assert "12 GPU in all" in message and "hold 12" in message and "need 13 GPUs" in message


def test_half_a_gpu_per_replica_is_two_replicas_per_gpu():
    assert replicas_per_gpu(0.5) == 2
    assert replicas_per_gpu(0.25) == 4
    assert replicas_per_gpu(1) == 1
    assert max_actors(gpu_nodes(1, 1), ActorShape(num_cpus=1, num_gpus=0.5)) == 2
    assert max_actors(gpu_nodes(2, 4), ActorShape(num_cpus=1, num_gpus=0.25)) == 32


@pytest.mark.parametrize("share, hint", [(0.3, "does not divide one GPU evenly"),
                                         (1.5, "whole number of GPUs (use 2)")])
def test_gpu_shares_that_waste_part_of_a_gpu_are_refused(share, hint):
    with pytest.raises(PlacementError, match=hint.replace("(", r"\(").replace(")", r"\)")):
        replicas_per_gpu(share)


def test_an_actor_never_spans_nodes_even_when_the_total_is_enough():
    nodes = gpu_nodes(4, 1)  # 4 GPUs in all, one per node
    with pytest.raises(PlacementError, match="no node has 2 GPUs"):
        place_actors(nodes, ActorShape(num_gpus=2), 2)


def test_cpus_per_node_limit_gpu_actors_too():
    nodes = gpu_nodes(1, 4, cpus=2)
    assert max_actors(nodes, ActorShape(num_cpus=1, num_gpus=1)) == 2


def test_custom_resources_pin_actors_to_the_nodes_that_have_them():
    nodes = [ClusterNode("a", cpus=4, custom={"node_a": 1}), ClusterNode("b", cpus=4)]
    assert place_actors(nodes, ActorShape(num_cpus=1, resources={"node_a": 0.5}), 2) == ["a", "a"]


def test_nodes_from_ray_reads_alive_nodes_and_drops_ray_markers():
    nodes = nodes_from_ray([
        {"NodeID": "n1", "Alive": True,
         "Resources": {"CPU": 8.0, "GPU": 4.0, "memory": 1e9, "node:10.0.0.1": 1.0,
                       "accelerator_type:A10G": 1.0, "node_a": 1.0}},
        {"NodeID": "n2", "Alive": False, "Resources": {"CPU": 8.0, "GPU": 4.0}},
    ])
    assert nodes == [ClusterNode("n1", cpus=8.0, gpus=4.0, custom={"node_a": 1.0})]


def test_replica_plan_places_deployments_on_what_earlier_ones_left():
    nodes = gpu_nodes(2, 1)
    placement = plan_replicas([
        ReplicaRequest("captioner", 2, ActorShape(num_cpus=1, num_gpus=0.5)),
        ReplicaRequest("embedder", 2, ActorShape(num_cpus=1, num_gpus=0.5)),
    ], nodes)
    assert sorted(placement["captioner"] + placement["embedder"]) == [
        "gpu-0", "gpu-0", "gpu-1", "gpu-1"]
    with pytest.raises(PlacementError, match="model 'late'") as raised:
        plan_replicas([ReplicaRequest("first", 2, ActorShape(num_gpus=1)),
                       ReplicaRequest("late", 1, ActorShape(num_gpus=0.5))], nodes)
    # The figures are what the model placed first left, and the message says so.
    assert ("have 30 CPU, 0 GPU left once model 'first' (2 x 1 CPU + 1 GPU) is placed, "
            "which hold 0") in raised.value.message


def test_serve_config_with_half_gpus_puts_two_replicas_on_each_gpu():
    config = serve_config(num_replicas=4, num_gpus=0.5)
    placement = plan_serve_placement(config, gpu_nodes(2, 1))
    assert sorted(placement["shapes-clip"]) == ["gpu-0", "gpu-0", "gpu-1", "gpu-1"]


def test_serve_config_asking_more_gpus_than_the_cluster_has_is_refused_before_serving():
    config = serve_config(num_replicas=3, num_gpus=1)
    with pytest.raises(PlacementError) as raised:
        check_placement(config, gpu_nodes(1, 2))
    assert "model 'shapes-clip'" in raised.value.message
    assert "need 3 GPUs" in raised.value.message


def test_autoscaling_is_checked_at_its_max_replicas():
    config = serve_config(num_gpus=1, autoscaling_config={"min_replicas": 1, "max_replicas": 5})
    assert most_replicas(config.models[0]) == 5
    with pytest.raises(PlacementError, match="need 5 GPUs"):
        check_placement(config, gpu_nodes(1, 4))
    check_placement(config, gpu_nodes(2, 4))  # 8 GPUs hold 5 replicas


def test_cpu_only_configs_are_left_to_the_autoscaler():
    check_placement(serve_config(num_replicas=50), [ClusterNode("cpu", cpus=2)])


def cpu_models(count: int, **deployment) -> ServeConfig:
    return ServeConfig.from_mapping({"models": [
        {"model": "builtin:shapes-clip", "name": f"m{i}", "deployment": deployment}
        for i in range(count)]})


def test_on_the_private_local_ray_cpu_replicas_that_cannot_fit_are_refused():
    laptop = [ClusterNode("local", cpus=2)]
    check_placement(cpu_models(2), laptop, fixed_nodes=True)  # the demo's shape: 2 of 1 CPU
    with pytest.raises(PlacementError) as raised:
        check_placement(cpu_models(3), laptop, fixed_nodes=True)
    message = raised.value.message
    assert message.startswith("model 'm2' does not fit on raysight's private local Ray")
    assert "reserve 3 CPU in all" in message and "this machine has 2 CPU" in message
    assert "deployment.num_cpus" in message
    check_placement(cpu_models(3, num_cpus=0.5), laptop, fixed_nodes=True)
    check_placement(cpu_models(5, num_cpus=0), laptop, fixed_nodes=True)  # reserve nothing
    check_placement(cpu_models(3), laptop)  # a cluster may add a node for the third


def test_the_private_ray_check_counts_the_replicas_serve_run_waits_for():
    scaling = {"min_replicas": 1, "max_replicas": 50}
    [served] = cpu_models(1, autoscaling_config=scaling).models
    assert (starting_replicas(served), most_replicas(served)) == (1, 50)
    check_placement(cpu_models(1, autoscaling_config=scaling), [ClusterNode("local", cpus=2)],
                    fixed_nodes=True)
    starting = {**scaling, "initial_replicas": 3}
    with pytest.raises(PlacementError, match="reserve 3 CPU in all"):
        check_placement(cpu_models(1, autoscaling_config=starting),
                        [ClusterNode("local", cpus=2)], fixed_nodes=True)


def test_a_gpu_job_on_three_nodes_of_four_gpus_gets_twelve_actors_one_per_gpu():
    job = job_config_for("caption", ModelSpec(model="builtin:shapes-vlm"), "in/", "out/")
    nodes = gpu_nodes(3, 4)
    plan = plan_job_on_nodes(job, nodes)
    assert (plan.model_actors, plan.model_num_gpus) == (12, 1.0)
    placed = model_actor_nodes(job, nodes)
    assert sorted(set(placed)) == ["gpu-0", "gpu-1", "gpu-2"] and len(placed) == 12


def test_a_job_whose_gpu_actors_cannot_fit_on_one_node_each_is_refused_before_it_starts():
    job = job_config_for("caption", ModelSpec(model="builtin:shapes-vlm"), "in/", "out/",
                         num_gpus=2)
    with pytest.raises(PlacementError, match="no node has 2 GPUs"):
        plan_job_on_nodes(job, gpu_nodes(4, 1))
