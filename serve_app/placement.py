"""Where a ServeConfig's replicas go on a cluster, checked before `serve.run`.

Serve waits forever for a replica that asks for more than the cluster has (GPUs anywhere; on
raysight's private local Ray, CPUs too, as no node will join it); raysight refuses such a
config at once instead, saying which model asks for what. The decisions are
`raysight.placement`'s pure functions; this module only reads a ServeConfig.
"""

from __future__ import annotations

from typing import Callable, Sequence

from raysight.errors import PlacementError
from raysight.placement import ActorShape, ClusterNode, ReplicaRequest, plan_replicas
from serve_app.config import ServeConfig, ServedModel


def most_replicas(served: ServedModel) -> int:
    """The replicas a model may run at once: num_replicas, or autoscaling's max_replicas."""
    scaling = served.deployment.autoscaling_config
    if scaling:
        return int(scaling.get("max_replicas", scaling.get("min_replicas", 1)))
    return served.deployment.num_replicas


def starting_replicas(served: ServedModel) -> int:
    """The replicas `serve.run` waits for: num_replicas, or autoscaling's initial_replicas
    (else its min_replicas, Serve's default 1)."""
    scaling = served.deployment.autoscaling_config
    if scaling:
        for name in ("initial_replicas", "min_replicas"):
            if scaling.get(name) is not None:
                return int(scaling[name])
        return 1
    return served.deployment.num_replicas


def replica_requests(config: ServeConfig,
                     replicas: Callable[[ServedModel], int] = most_replicas
                     ) -> list[ReplicaRequest]:
    """Each model deployment's `replicas` (by default its most) and what each reserves, GPU
    models first (they are the ones that can fail to fit), then the ingress."""
    requests = [
        ReplicaRequest(
            name=served.name,
            replicas=replicas(served),
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


def check_placement(config: ServeConfig, nodes: Sequence[ClusterNode],
                    fixed_nodes: bool = False) -> None:
    """Refuse a config whose replicas cannot be placed on `nodes`, which `serve.run` would
    otherwise wait for with no end.

    GPU models are checked on any cluster, at their most replicas: a GPU ask the nodes cannot
    hold is a mistake. CPU replicas that do not fit wait for a node an autoscaling cluster
    adds, so they are checked only with `fixed_nodes` (raysight's private local Ray: this
    machine, and no node can join), at the replicas `serve.run` waits for."""
    gpu_requests = [request for request in replica_requests(config) if request.shape.num_gpus]
    if gpu_requests:
        plan_replicas(gpu_requests, nodes)
    if not fixed_nodes:
        return
    starting = [request for request in replica_requests(config, starting_replicas)
                if request.shape.num_cpus or request.shape.num_gpus or request.shape.resources]
    try:
        plan_replicas(starting, nodes)
    except PlacementError as exc:
        which = f"model {exc.model!r}" if exc.model else "it"
        asked = ", ".join(f"{request.name} {request.replicas} x {request.shape.describe()}"
                          for request in starting)
        cpus = sum(request.replicas * request.shape.num_cpus for request in starting)
        raise PlacementError(
            f"{which} does not fit on raysight's private local Ray: the replicas serve.run "
            f"waits for reserve {cpus:g} CPU in all ({asked}) and this machine has "
            f"{sum(node.cpus for node in nodes):g} CPU, {sum(node.gpus for node in nodes):g} "
            "GPU; no node can join a private Ray. Lower deployment.num_cpus (0.5 lets two "
            "replicas share a CPU), serve fewer models or replicas, or join a cluster with "
            "--address"
        ) from None
