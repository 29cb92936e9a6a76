"""raysight on a real multi-node Ray: a head with no CPUs and three worker nodes (separate
raylets on this machine, each 1 CPU and a custom resource naming it: node_a, node_b, node_c).

One cluster serves the whole module, driven by an agent process (tests/integration/multinode.py)
so this pytest process stays free for the session's own Ray. In order: two replicas on two
nodes under load, a node killed under load, autoscaling up and down, `raysight serve` joining
the cluster and leaving it up, then jobs: an embed job across nodes equal to a single-node run,
and a node killed in the middle of a job (every row exactly once); last, Ray's scheduler
places GPU actors on nodes advertising GPUs where `raysight.placement` says it will.

Each test records its figures (node of each replica and actor, requests per replica, seconds
to scale, to recover, rows lost and duplicated) in FIGURES; they are printed at the end and,
with RAYSIGHT_FIGURES_FILE set, written there as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysight.shapes import write_shapes_folder
from tests.api_server import free_port
from tests.integration.multinode import TALLY_ENV, MultiNodeCluster, read_tally, tally_folder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APP = "multi"
DEPLOYMENT = "model-shapes-clip"
WORKERS = ["node_a", "node_b", "node_c"]
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def cluster():
    # A short temp dir of its own (Ray's socket paths are length-limited): the cluster's
    # files and its address file stay there, so no other `ray.init()` on this machine finds it.
    temp = tempfile.mkdtemp(prefix="rsmn-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp,
           "PYTHONPATH": str(REPO), "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    handle = MultiNodeCluster(WORKERS, free_port(), env, Path(temp) / "agent.log")
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(temp, ignore_errors=True)
        print("\ncluster figures: " + json.dumps(FIGURES, indent=1, sort_keys=True))
        if os.environ.get("RAYSIGHT_FIGURES_FILE"):
            Path(os.environ["RAYSIGHT_FIGURES_FILE"]).write_text(json.dumps(FIGURES, indent=1))


def deploy(cluster: MultiNodeCluster, tally: Path, **deployment) -> str:
    deployment.setdefault("num_cpus", 1)
    deployment["env_vars"] = {TALLY_ENV: str(tally), "OMP_WAIT_POLICY": "PASSIVE"}
    config = {"app_name": APP, "models": [{"model": "builtin:shapes-clip", "max_batch_size": 8,
                                           "deployment": deployment}]}
    return cluster.call("deploy", config=config)


def running_replicas(cluster: MultiNodeCluster) -> int:
    return cluster.call("replicas", app=APP, deployment=DEPLOYMENT).get("RUNNING", 0)


class Load:
    """Clients sending /v1/embeddings requests in a loop until stopped; records each one."""

    def __init__(self, url: str, clients: int):
        self.url = url
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int]] = []  # (start, end, status; 0 = no answer)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, number: int) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                started = time.time()
                try:
                    status = client.post(f"{self.url}/v1/embeddings", json={
                        "model": "shapes-clip", "input": f"a red circle {number}"}).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.results.append((started, time.time(), status))
                if status != 200:
                    time.sleep(0.05)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def count(self) -> int:
        with self.lock:
            return len(self.results)


def wait_for(condition, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


# --- serving ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_replicas(cluster, tmp_path_factory):
    tally = tally_folder(tmp_path_factory.mktemp("serve"))
    url = deploy(cluster, tally, num_replicas=2)
    return url, tally


def test_two_replicas_run_on_two_nodes_and_both_answer_under_load(cluster, two_replicas):
    url, tally = two_replicas
    with Load(url, clients=8) as load:
        assert wait_for(lambda: load.count() >= 120, timeout=120), load.count()
    statuses = [status for _, _, status in load.results]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    replicas = read_tally(tally)
    assert len(replicas) == 2
    assert len({info["node"] for info in replicas.values()}) == 2, replicas
    assert all(info["node"].startswith("node_") for info in replicas.values())
    counts = {info["node"]: info["requests"] for info in replicas.values()}
    assert all(count > 0 for count in counts.values()), counts
    assert sum(counts.values()) == len(statuses)
    FIGURES["replicas: requests per replica (node -> requests)"] = counts


def test_killing_a_node_under_load_fails_only_requests_in_flight_there(cluster, two_replicas):
    url, tally = two_replicas
    victim = sorted(info["node"] for info in read_tally(tally).values())[0]
    with Load(url, clients=8) as load:
        assert wait_for(lambda: load.count() >= 20, timeout=60)
        killed = cluster.call("remove_node", name=victim)
        # Requests must succeed again: wait for 40 answered after the kill.
        wait_for(lambda: sum(1 for s, _, st in load.results if s > killed and st == 200) >= 40,
                 timeout=120)
    results = sorted(load.results)
    failed = [(start, end) for start, end, status in results if status != 200]
    after = [(start, status) for start, _, status in results if start > killed]
    assert sum(1 for _, status in after if status == 200) >= 40, "no recovery after the kill"
    # Every failure was a request in flight on the lost node, or sent while Serve was still
    # routing to its dead replica: none started long after the kill.
    last_failure = max((end for _, end in failed), default=killed)
    recovered_s = max(0.0, last_failure - killed)
    assert recovered_s < 60, f"requests still failed {recovered_s:.1f} s after the kill"
    assert all(start < killed + 60 for start, _ in failed)
    # Serve replaces the lost replica on the node that is left: a third replica starts there.
    assert wait_for(lambda: len(read_tally(tally)) == 3 and running_replicas(cluster) == 2,
                    timeout=180), read_tally(tally)
    replicas = read_tally(tally)
    replacement = max(replicas.values(), key=lambda info: info["started"])
    assert replacement["node"] not in (victim,) and replacement["started"] > killed
    FIGURES["node kill while serving"] = {
        "killed": victim, "requests": len(results), "failed": len(failed),
        "seconds_until_requests_succeed_again": round(recovered_s, 2),
        "seconds_until_the_replacement_replica_started": round(replacement["started"] - killed, 1),
        "replacement_on": replacement["node"],
        "requests_per_replica": {i["node"]: i["requests"] for i in replicas.values()},
    }
    cluster.call("add_node", name="node_d")  # the cloud would replace the node too


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(cluster, tmp_path):
    tally = tally_folder(tmp_path)
    url = deploy(cluster, tally, num_cpus=0.5, autoscaling_config={
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
        "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2,
        "metrics_interval_s": 0.5,
    })
    assert wait_for(lambda: running_replicas(cluster) == 1, timeout=120)
    with Load(url, clients=8) as load:
        started = time.monotonic()
        assert wait_for(lambda: running_replicas(cluster) >= 2, timeout=120, step=0.25), \
            "no second replica under load"
        up_s = time.monotonic() - started
        time.sleep(2)  # both answer for a while
    stopped = time.monotonic()
    assert wait_for(lambda: running_replicas(cluster) == 1, timeout=120, step=0.25), \
        "still more than one replica after the load stopped"
    down_s = time.monotonic() - stopped
    assert all(status == 200 for _, _, status in load.results)
    replicas = read_tally(tally)
    assert len(replicas) >= 2
    FIGURES["autoscaling"] = {
        "seconds_to_scale_up": round(up_s, 2), "seconds_to_scale_down": round(down_s, 2),
        "replicas_started": len(replicas),
        "requests_per_replica": {r[:8]: i["requests"] for r, i in replicas.items()},
        "replica_nodes": sorted(i["node"] for i in replicas.values()),
    }


def test_raysight_serve_joins_the_cluster_and_leaves_it_up_when_stopped(cluster, tmp_path):
    import httpx

    config = tmp_path / "joined.yaml"
    config.write_text(json.dumps({
        "app_name": "joined", "route_prefix": "/joined",
        "models": [{"model": "builtin:shapes-clip", "name": "joined-clip",
                    "deployment": {"num_cpus": 0.5}}],
    }))
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        # RAY_ADDRESS alone (no --address) makes it join the cluster.
        process = subprocess.Popen(
            [str(BIN / "raysight"), "serve", "--serve-config", str(config)],
            cwd=tmp_path, env=cluster.job_env(), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_for(lambda: "raysight: serving" in log.read_text() or process.poll() is not None,
                        timeout=240), log.read_text()[-2000:]
        assert process.poll() is None, log.read_text()[-3000:]
        assert "on the Ray cluster at" in log.read_text()
        base = f"http://127.0.0.1:{cluster.http_port}"
        models = httpx.get(f"{base}/joined/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["joined-clip"]
        assert set(cluster.call("apps")) == {APP, "joined"}
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]
    # Its own app is gone; the cluster, Serve and the other app are still up.
    assert cluster.call("apps") == [APP]
    assert sum(1 for node in cluster.call("nodes") if node["alive"]) == 4
    answer = httpx.post(f"{base}/v1/embeddings", json={"model": "shapes-clip", "input": "x"},
                        timeout=30)
    assert answer.status_code == 200
    cluster.call("delete_app", app=APP)  # the jobs below need the CPUs


# --- jobs ---------------------------------------------------------------------------------


def run_embed(cluster: MultiNodeCluster, images: Path, output: Path, *extra: str,
              background: bool = False):
    command = [sys.executable, "-m", "batch_jobs.embed", "--model", "builtin:shapes-clip",
               "--input", str(images), "--output", str(output), "--actor-pool-size", "2",
               "--batch-size", "8", "--preprocess-batch-size", "8", "--no-progress", "--json",
               *extra]
    if background:
        return subprocess.Popen(command, cwd=REPO, env=cluster.job_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=REPO, env=cluster.job_env(), capture_output=True,
                          text=True, timeout=300)


def output_table(folder: Path):
    import pyarrow as pa

    parts = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts)


def model_actor_nodes(cluster: MultiNodeCluster, since: set[str]) -> list[dict]:
    return [a for a in cluster.call("actors", repr_part="ModelStage")
            if a["actor_id"] not in since]


def test_an_embed_job_runs_its_model_actors_on_two_nodes_and_matches_one_node(
        cluster, ray_session, tmp_path):
    import numpy as np

    from batch_jobs.embed import run_embed as embed_here

    images = write_shapes_folder(tmp_path / "images", 24, seed=5, corrupt=1)
    before = {a["actor_id"] for a in model_actor_nodes(cluster, set())}
    done = run_embed(cluster, images, tmp_path / "multi")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    actors = model_actor_nodes(cluster, before)
    nodes = sorted({a["node"] for a in actors})
    assert len(actors) == 2 and len(nodes) == 2, actors
    # The same job on one node (the session's local Ray), for the row-by-row comparison.
    embed_here("builtin:shapes-clip", str(images), str(tmp_path / "single"), batch_size=8,
               progress=False)
    multi = output_table(tmp_path / "multi").sort_by("path").to_pydict()
    single = output_table(tmp_path / "single").sort_by("path").to_pydict()
    assert multi["path"] == single["path"] and len(multi["path"]) == 25
    assert multi["error_type"] == single["error_type"]
    for a, b in zip(multi["embedding"], single["embedding"]):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert np.allclose(a, b, atol=1e-5)
    FIGURES["embed job across nodes"] = {"rows": len(multi["path"]), "model_actor_nodes": nodes}


def test_a_node_killed_mid_job_loses_and_duplicates_no_row(cluster, tmp_path):
    images = write_shapes_folder(tmp_path / "images", 64, seed=6)
    output = tmp_path / "out"
    before = {a["actor_id"] for a in model_actor_nodes(cluster, set())}
    job = run_embed(cluster, images, output, "--rows-per-file", "8", background=True)
    try:
        started = wait_for(lambda: any(output.glob("part-*.parquet")) or job.poll() is not None,
                           timeout=240, step=0.2)
        assert started and job.poll() is None, "the job ended before any part was written"
        actors = [a for a in model_actor_nodes(cluster, before) if a["state"] == "ALIVE"]
        victim = sorted(a["node"] for a in actors)[0]
        rows_before = len(output_table(output))
        killed = cluster.call("remove_node", name=victim)
        cluster.call("add_node", name="node_e")  # as an autoscaler would replace it
        logs, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, logs[-4000:]
    paths = output_table(output)["path"].to_pylist()
    wanted = {str(p) for p in images.glob("*.png")}
    lost = len(wanted - set(paths))
    duplicated = len(paths) - len(set(paths))
    FIGURES["node kill mid-job"] = {
        "killed": victim, "rows_written_before_kill": rows_before, "rows": len(paths),
        "rows_lost": lost, "rows_duplicated": duplicated,
        "seconds_after_kill_to_finish": round(time.time() - killed, 1),
    }
    assert (lost, duplicated) == (0, 0)


# --- GPU placement: the pure functions agree with Ray's scheduler -----------------------------


def test_rays_scheduler_places_gpu_actors_where_the_placement_functions_say(cluster):
    from collections import Counter

    from raysight.placement import ActorShape, ClusterNode, max_actors, place_actors

    # Two nodes advertising 2 and 1 GPUs (Ray schedules by what a node advertises).
    cluster.call("add_gpu_node", name="gpu_x", gpus=2)
    cluster.call("add_gpu_node", name="gpu_y", gpus=1)
    try:
        nodes = [ClusterNode(n["node"], cpus=n["resources"].get("CPU", 0),
                             gpus=n["resources"].get("GPU", 0))
                 for n in cluster.call("nodes") if n["alive"]]
        whole = ActorShape(num_cpus=0, num_gpus=1)
        fits = max_actors(nodes, whole)
        predicted = Counter(place_actors(nodes, whole, fits))
        placed = cluster.call("place_probes", count=fits + 1, num_gpus=1)
        assert fits == 3 and placed.count(None) == 1  # the one past the GPUs waits
        assert Counter(p for p in placed if p) == predicted == Counter({"gpu_x": 2, "gpu_y": 1})
        # Half a GPU each: two share gpu_y's one GPU, a third waits.
        half = ActorShape(num_cpus=0, num_gpus=0.5, resources={"gpu_y": 0.01})
        on_y = [ClusterNode(n.name, n.cpus, n.gpus, {"gpu_y": 1}) for n in nodes
                if n.name == "gpu_y"]
        placed_half = cluster.call("place_probes", count=3, num_gpus=0.5,
                                   resources={"gpu_y": 0.01})
        assert max_actors(on_y, half) == 2 == sum(p == "gpu_y" for p in placed_half)
        assert placed_half.count(None) == 1
        FIGURES["gpu placement (Ray's scheduler vs place_actors)"] = {
            "1-GPU actors": dict(Counter(p or "waiting" for p in placed)),
            "0.5-GPU actors on a 1-GPU node": dict(Counter(p or "waiting" for p in placed_half)),
        }
    finally:
        cluster.call("remove_node", name="gpu_x")
        cluster.call("remove_node", name="gpu_y")
