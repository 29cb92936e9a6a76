"""Where a ServeConfig's replicas go on a cluster, checked before `serve.run`.

Serve waits forever for a replica that asks for GPUs the cluster does not have; raysight
refuses such a config at once instead, saying which model asks for what. The decisions are
`raysight.placement`'s pure functions; this module only reads a ServeConfig.
"""

from __future__ import annotations

from typing import Sequence

from raysight.placement import ActorShape, ClusterNode, ReplicaRequest, plan_replicas
from serve_app.config import ServeConfig, ServedModel


def most_replicas(served: ServedModel) -> int:
    """The replicas a model may run at once: num_replicas, or autoscaling's max_replicas."""
    scaling = served.deployment.autoscaling_config
    if scaling:
        return int(scaling.get("max_replicas", scaling.get("min_replicas", 1)))
    return served.deployment.num_replicas


def replica_requests(config: ServeConfig) -> list[ReplicaRequest]:
    """Each model deployment's most replicas and what each reserves, GPU models first (they
    are the ones that can fail to fit), then the ingress."""
    requests = [
        ReplicaRequest(
            name=served.name,
            replicas=most_replicas(served),
            shape=ActorShape(num_cpus=served.deployment.num_cpus,
                             num_gpus=served.deployment.num_gpus),
        )
        for served in config.models
    ]
    requests.sort(key=lambda request: -request.shape.num_gpus)
    ingress = config.ingress
    if ingress.num_cpus:
        requests.append(ReplicaRequest("ingress", ingress.num_replicas,
                                       ActorShape(num_cpus=ingress.num_cpus)))
    return requests


def plan_serve_placement(config: ServeConfig,
                         nodes: Sequence[ClusterNode]) -> dict[str, list[str]]:
    """The node of every replica at its most (autoscaling's max_replicas), or a
    PlacementError naming the model that does not fit and what the cluster has."""
    return plan_replicas(replica_requests(config), nodes)


def check_gpu_placement(config: ServeConfig, nodes: Sequence[ClusterNode]) -> None:
    """Refuse a config whose GPU models cannot all be placed on `nodes` at their most.

    Only GPU models are checked: CPU replicas that do not fit yet wait for a node (an
    autoscaling cluster adds one), but a GPU ask the nodes cannot hold is a mistake that
    would otherwise leave `serve.run` waiting with no message."""
    gpu_requests = [request for request in replica_requests(config) if request.shape.num_gpus]
    if gpu_requests:
        plan_replicas(gpu_requests, nodes)
