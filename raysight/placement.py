"""Where model actors and replicas go on a cluster, decided before anything starts.

Ray places an actor on one node that has all of what it reserves; a 1-GPU actor never spans
two nodes, and 0.5-GPU replicas share a GPU two by two. These functions compute the same
thing from a description of the nodes (``nodes_from_ray(ray.nodes())``, or made up in a
test: 3 nodes x 4 GPUs), so a job or an app that cannot fit is refused with a clear error
instead of waiting forever for resources that do not exist. They are pure: no Ray calls.

    nodes = [ClusterNode(f"gpu-{i}", cpus=16, gpus=4) for i in range(3)]
    max_actors(nodes, ActorShape(num_cpus=1, num_gpus=1))         # 12
    replicas_per_gpu(0.5)                                          # 2
    place_actors(nodes, ActorShape(num_cpus=1, num_gpus=1), 12)    # node of each actor
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from raysight.errors import PlacementError

# Ray counts resources in units of 1/10000; sums of fractions are compared at that grain.
_GRAIN = 10_000


@dataclass(frozen=True)
class ClusterNode:
    """One node's schedulable resources (what Ray's `Resources` says it has)."""

    name: str
    cpus: float = 0.0
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ActorShape:
    """What one actor or replica reserves."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} GPU")
        parts += [f"{amount:g} {name}" for name, amount in sorted(self.resources.items())]
        return " + ".join(parts)


def _units(amount: float) -> int:
    return int(round(amount * _GRAIN))


def nodes_from_ray(ray_nodes: Iterable[Mapping]) -> list[ClusterNode]:
    """ClusterNodes from `ray.nodes()`: alive nodes only, with CPU, GPU and custom resources
    (Ray's per-node `node:<ip>` markers and memory are left out)."""
    nodes = []
    for node in ray_nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = dict(node.get("Resources", {}))
        custom = {
            name: amount for name, amount in resources.items()
            if name not in ("CPU", "GPU", "memory", "object_store_memory")
            and not name.startswith("node:") and not name.startswith("accelerator_type:")
        }
        nodes.append(ClusterNode(
            name=str(node.get("NodeID", node.get("NodeManagerAddress", "?"))),
            cpus=float(resources.get("CPU", 0.0)),
            gpus=float(resources.get("GPU", 0.0)),
            custom=custom,
        ))
    return nodes


def replicas_per_gpu(num_gpus: float) -> int:
    """How many replicas of `num_gpus` each share one GPU (0.5 -> 2, 0.25 -> 4, 1 -> 1).

    A fraction must divide one GPU evenly: 0.3 would leave 0.1 of every GPU unusable and
    is refused. Above one GPU a replica needs whole GPUs (2, not 1.5)."""
    if num_gpus <= 0:
        raise PlacementError(f"num_gpus {num_gpus:g} uses no GPU; replicas per GPU is undefined")
    if num_gpus >= 1:
        if num_gpus != int(num_gpus):
            raise PlacementError(
                f"num_gpus {num_gpus:g}: above one GPU a replica needs a whole number of GPUs "
                f"(use {math.ceil(num_gpus)})"
            )
        return 1
    share = round(1 / num_gpus)
    if _units(share * num_gpus) != _GRAIN:
        raise PlacementError(
            f"num_gpus {num_gpus:g} does not divide one GPU evenly; use 1/n of a GPU "
            "(0.5, 0.25, 0.2, ...) so that no part of a GPU is left unused"
        )
    return share


def actors_on_node(node: ClusterNode, shape: ActorShape) -> int:
    """How many actors of `shape` fit on `node` by themselves."""
    limits = []
    for have, need in ((node.cpus, shape.num_cpus), (node.gpus, shape.num_gpus),
                       *((node.custom.get(name, 0.0), amount)
                         for name, amount in shape.resources.items())):
        if need > 0:
            limits.append(_units(have) // _units(need))
    if not limits:
        raise PlacementError("an actor that reserves nothing fits without limit; give it a "
                             "CPU, GPU or custom resource")
    return min(limits)


def max_actors(nodes: Sequence[ClusterNode], shape: ActorShape) -> int:
    """How many actors of `shape` the nodes hold together (each actor on one node)."""
    return sum(actors_on_node(node, shape) for node in nodes)


def place_actors(nodes: Sequence[ClusterNode], shape: ActorShape, count: int,
                 placed_first: str = "") -> list[str]:
    """The node name of each of `count` actors of `shape`, spread like Serve spreads replicas:
    the next actor goes to the node with the most of them still free. Raises PlacementError,
    saying what the cluster has and what to change, when they do not all fit; `placed_first`
    names what took part of `nodes` already (they are what it left), for that message."""
    if count < 0:
        raise PlacementError(f"cannot place {count} actors")
    free = {node.name: actors_on_node(node, shape) for node in nodes}
    fits = sum(free.values())
    if count > fits:
        raise PlacementError(_too_many(nodes, shape, count, fits, placed_first))
    placed = []
    for _ in range(count):
        name = max(free, key=lambda n: (free[n], -list(free).index(n)))
        free[name] -= 1
        placed.append(name)
    return placed


def _too_many(nodes: Sequence[ClusterNode], shape: ActorShape, count: int, fits: int,
              placed_first: str = "") -> str:
    gpus = sum(node.gpus for node in nodes)
    cpus = sum(node.cpus for node in nodes)
    have = (f"have {cpus:g} CPU, {gpus:g} GPU left once {placed_first} placed, which hold"
            if placed_first else f"({cpus:g} CPU, {gpus:g} GPU in all) hold")
    message = (f"{count} actor(s) of {shape.describe()} do not fit: the cluster's {len(nodes)} "
               f"node(s) {have} {fits}")
    if shape.num_gpus and count * shape.num_gpus > gpus:
        message += (f"; they need {count * shape.num_gpus:g} GPUs. Add GPU nodes, lower the "
                    "replica or actor count, or share GPUs with a fractional num_gpus (0.5)")
    elif shape.num_gpus and nodes and max(node.gpus for node in nodes) < shape.num_gpus:
        message += (f"; no node has {shape.num_gpus:g} GPUs (an actor runs on one node). "
                    "Lower num_gpus per actor")
    else:
        message += "; lower the count, or the CPUs / GPUs each one reserves"
    return message


@dataclass(frozen=True)
class ReplicaRequest:
    """A model deployment's ask: its most replicas and what each reserves."""

    name: str
    replicas: int
    shape: ActorShape


def plan_replicas(requests: Sequence[ReplicaRequest],
                  nodes: Sequence[ClusterNode]) -> dict[str, list[str]]:
    """The node of every replica of every deployment, placed one deployment after another
    on what is left; raises PlacementError naming the deployment that does not fit."""
    left = list(nodes)
    placement: dict[str, list[str]] = {}
    for number, request in enumerate(requests):
        if request.shape.num_gpus:
            replicas_per_gpu(request.shape.num_gpus)  # refuses shares that waste a GPU
        first = [f"model {earlier.name!r} ({earlier.replicas} x {earlier.shape.describe()})"
                 for earlier in requests[:number] if earlier.replicas]
        placed_first = " and ".join(first) + (" are" if len(first) > 1 else " is")
        try:
            placed = place_actors(left, request.shape, request.replicas,
                                  placed_first if first else "")
        except PlacementError as exc:
            raise PlacementError(f"model {request.name!r}: {exc.message}",
                                 model=request.name) from None
        placement[request.name] = placed
        left = [_minus(node, request.shape, placed.count(node.name)) for node in left]
    return placement


def _minus(node: ClusterNode, shape: ActorShape, count: int) -> ClusterNode:
    custom = dict(node.custom)
    for name, amount in shape.resources.items():
        custom[name] = custom.get(name, 0.0) - count * amount
    return ClusterNode(node.name, node.cpus - count * shape.num_cpus,
                       node.gpus - count * shape.num_gpus, custom)
