"""How much of the cluster each stage reserves, sized from what the cluster has.

Ray schedules by reservations, not by use: a model pool that reserves every CPU leaves the
read tasks nothing and the job waits forever (`backpressured:tasks(ResourceBudget)`). So the
model stage reserves at most half the CPUs, the CPU stages reserve fractions, and torch's
thread count is set separately from the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from raysight.errors import ConfigError
from raysight.placement import ActorShape, ClusterNode, place_actors

from batch_jobs.config import JobConfig

READ_NUM_CPUS = 0.25
WRITE_NUM_CPUS = 0.25
# Share of the cluster's CPUs the model actors may reserve together.
MODEL_CPU_SHARE = 0.5


@dataclass(frozen=True)
class StagePlan:
    """Actor pools and reservations for one job on one cluster."""

    model_actors: int
    model_num_cpus: float
    model_num_gpus: float
    torch_threads: int | None  # None: each actor shares its node's cores with the others
    preprocess_actors: tuple[int, int]  # (min, max) of the autoscaling CPU pool
    preprocess_num_cpus: float
    preprocess_in_model: bool = False  # no CPU stage: the model actors prepare their rows
    read_num_cpus: float = READ_NUM_CPUS
    write_num_cpus: float = WRITE_NUM_CPUS

    def describe(self) -> str:
        gpus = f", {self.model_num_gpus:g} GPU" if self.model_num_gpus else ""
        model = f"model: {self.model_actors} actor(s) x ({self.model_num_cpus:g} CPU{gpus})"
        if self.preprocess_in_model:
            return f"{model}; preprocess: in the model actors"
        low, high = self.preprocess_actors
        return f"{model}; preprocess: {low}-{high} actor(s) x {self.preprocess_num_cpus:g} CPU"


def plan_stages(job: JobConfig, cluster: Mapping[str, float]) -> StagePlan:
    """Size the pools from `cluster` (e.g. `ray.cluster_resources()`) and the job's settings."""
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    if cpus <= 0:
        raise ConfigError("the Ray cluster has no CPUs; the read and preprocess stages need some")
    gpus_per_actor = _gpus_per_actor(job, gpus)
    if gpus_per_actor:
        actors = job.actor_pool_size or max(1, int(gpus // gpus_per_actor))
        if actors * gpus_per_actor > gpus:
            raise ConfigError(
                f"{actors} model actors x {gpus_per_actor:g} GPU need {actors * gpus_per_actor:g} "
                f"GPUs; the cluster has {gpus:g}. Lower --actor-pool-size or --num-gpus"
            )
    else:
        actors = job.actor_pool_size or max(1, int(cpus // 4))
    model_cpus = job.model_num_cpus or min(1.0, cpus * MODEL_CPU_SHARE / actors)
    if actors * model_cpus > cpus - READ_NUM_CPUS - WRITE_NUM_CPUS:
        raise ConfigError(
            f"{actors} model actors x {model_cpus:g} CPU reserve {actors * model_cpus:g} of the "
            f"cluster's {cpus:g} CPUs, leaving too little for reading and writing; the job would "
            "wait forever. Lower --model-num-cpus or --actor-pool-size"
        )
    most = job.preprocess_max_actors or max(1, int(cpus // 2))
    preprocess_cpus = min(1.0, max(0.1, (cpus - actors * model_cpus) / (2 * most)))
    return StagePlan(
        model_actors=actors,
        model_num_cpus=round(model_cpus, 3),
        model_num_gpus=gpus_per_actor,
        torch_threads=job.torch_threads,
        preprocess_actors=(1, most),
        preprocess_num_cpus=round(preprocess_cpus, 3),
        preprocess_in_model=_preprocess_in_model(job, actors, gpus_per_actor, cpus),
    )


def _preprocess_in_model(job: JobConfig, actors: int, gpus_per_actor: float,
                         cpus: float) -> bool:
    """Whether the model actors prepare their own rows (`JobConfig.preprocess_in`).

    A separate CPU stage pays for a process per actor, a pickle and an object-store hop per
    row, and wins by preparing the next rows on cores the forward leaves idle. On CPU, when
    the model actors' torch threads already fill every CPU, no core is idle: the stage only
    takes cores from the forward (2 CPUs, 2 one-thread actors: the stage's actor held 0.3-0.6
    of a core for the job's first 40 s, ~4x the CPU per image of preparing in process).
    """
    if job.preprocess_in != "auto":
        return job.preprocess_in == "model"
    if gpus_per_actor or job.torch_threads is None:
        return False
    return actors * job.torch_threads >= cpus


def _gpus_per_actor(job: JobConfig, gpus: float) -> float:
    if job.num_gpus is not None:
        if job.num_gpus > 0 and gpus < job.num_gpus:
            raise ConfigError(
                f"--num-gpus {job.num_gpus:g} per model actor, but the cluster has {gpus:g} "
                "GPUs; use --num-gpus 0 to run the model on CPU"
            )
        return job.num_gpus
    return 1.0 if gpus >= 1 and job.spec.device != "cpu" else 0.0


def cluster_totals(nodes: list[ClusterNode]) -> dict[str, float]:
    """The cluster-wide CPU and GPU totals of `nodes` (what `ray.cluster_resources()` sums)."""
    return {"CPU": sum(n.cpus for n in nodes), "GPU": sum(n.gpus for n in nodes)}


def plan_job_on_nodes(job: JobConfig, nodes: list[ClusterNode]) -> StagePlan:
    """`plan_stages` over the nodes' totals, then a check that every GPU model actor fits on
    one node: 2 actors of 2 GPUs do not fit on 4 nodes of 1 GPU, though the cluster has 4.
    Raises PlacementError before anything starts when they do not."""
    plan = plan_stages(job, cluster_totals(nodes))
    if plan.model_num_gpus:
        shape = ActorShape(num_cpus=plan.model_num_cpus, num_gpus=plan.model_num_gpus)
        place_actors(nodes, shape, plan.model_actors)
    return plan


def model_actor_nodes(job: JobConfig, nodes: list[ClusterNode]) -> list[str]:
    """Where the job's model actors go: one node name per actor (see `place_actors`)."""
    plan = plan_job_on_nodes(job, nodes)
    shape = ActorShape(num_cpus=plan.model_num_cpus, num_gpus=plan.model_num_gpus)
    return place_actors(nodes, shape, plan.model_actors)
