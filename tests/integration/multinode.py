"""A multi-node Ray cluster on this machine, driven from its own process.

A pytest process is connected to one Ray at a time (the session's local Ray), so the
multi-node cluster lives in a separate "agent" process: it starts a head node with no CPUs
and worker nodes (separate raylets) with 1 CPU and a custom resource naming the node
(``node_a: 1``), connects to the cluster as a driver, and answers commands sent as JSON lines
on its stdin: add or remove a node, deploy a Serve app, count replicas, list actors. Jobs run
as their own processes with RAY_ADDRESS set to the cluster, as a user would run them.

    python -m tests.integration.multinode     (started by MultiNodeCluster, not by hand)

`TallyingModelServer` is the ModelServer that the tests deploy: each replica writes where it
runs and each request it answers into files under $RAYSIGHT_TEST_TALLY, so the test counts
requests per replica and sees the node of each replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from serve_app.deployment import ModelServer

REPO = Path(__file__).resolve().parents[2]
TALLY_ENV = "RAYSIGHT_TEST_TALLY"
REPLY = "@@reply "


def node_name_of(node_id: str) -> str:
    """The custom resource naming a node ('node_a'), or 'head'."""
    import ray

    for node in ray.nodes():
        if node["NodeID"] == node_id:
            names = [n for n in node["Resources"]
                     if n.startswith(("node_", "gpu_")) and n != "node_id"]
            return names[0] if names else "head"
    return "unknown"


class TallyingModelServer(ModelServer):
    """A ModelServer that records its node and every request it answers (test only)."""

    def __init__(self, spec, torch_threads=None, engine=None):
        super().__init__(spec, torch_threads, engine)
        import ray
        from ray import serve

        self._tally = Path(os.environ[TALLY_ENV])
        self._replica = serve.get_replica_context().replica_id.unique_id
        node_id = ray.get_runtime_context().get_node_id()
        (self._tally / f"replica-{self._replica}.json").write_text(json.dumps({
            "replica": self._replica, "node_id": node_id, "node": node_name_of(node_id),
            "started": time.time(),
        }))

    async def embed(self, requests: list):
        results = await super().embed(requests)
        with open(self._tally / f"requests-{self._replica}.log", "a") as handle:
            handle.write(f"{time.time()}\n")
        return results


class Probe:
    """An actor that only says which node it runs on (for placement checks)."""

    def node(self) -> str:
        import ray

        return node_name_of(ray.get_runtime_context().get_node_id())


def read_tally(folder: Path) -> dict[str, dict]:
    """replica id -> {node, requests, started} from a tally folder."""
    replicas = {}
    for path in folder.glob("replica-*.json"):
        info = json.loads(path.read_text())
        log = folder / f"requests-{info['replica']}.log"
        info["requests"] = len(log.read_text().split()) if log.exists() else 0
        replicas[info["replica"]] = info
    return replicas


# --- the agent (runs in its own process) --------------------------------------------------


class Agent:
    def __init__(self, workers: list[str], http_port: int):
        from ray.cluster_utils import Cluster

        self.http_port = http_port
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0, "include_dashboard": False,
                # A dead raylet is declared dead after 3 missed 1 s health checks (Ray's
                # defaults wait longer); the tests measure recovery, not Ray's patience.
                "_system_config": {"health_check_period_ms": 1000,
                                   "health_check_failure_threshold": 3},
            },
        )
        self.nodes: dict[str, Any] = {}
        for name in workers:
            self._add(name)
        self.cluster.wait_for_nodes()
        import ray

        ray.init(address=self.cluster.address, log_to_driver=False)

    def _add(self, name: str) -> None:
        self.nodes[name] = self.cluster.add_node(num_cpus=1, resources={name: 1})

    def op_address(self) -> str:
        return self.cluster.address

    def op_nodes(self) -> list[dict]:
        import ray

        return [
            {"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"],
             "node": next((r for r in n["Resources"]
                           if r.startswith(("node_", "gpu_")) and r != "node_id"), "head")}
            for n in ray.nodes()
        ]

    def op_add_node(self, name: str) -> float:
        started = time.monotonic()
        self._add(name)
        self.cluster.wait_for_nodes()
        return time.monotonic() - started

    def op_add_gpu_node(self, name: str, gpus: int) -> None:
        """A node advertising `gpus` GPUs. Ray schedules by the count a node advertises, so
        its placement decisions are real even though this machine has no GPU."""
        self.nodes[name] = self.cluster.add_node(num_cpus=gpus, num_gpus=gpus,
                                                 resources={name: 1})
        self.cluster.wait_for_nodes()

    def op_place_probes(self, count: int, num_gpus: float, resources: dict | None = None,
                        settle_s: float = 15.0) -> list[str | None]:
        """Start `count` actors of `num_gpus` each; return each one's node name, or None for
        those Ray could not place (waited for until no more start for `settle_s`). All are
        killed before returning."""
        import ray

        probe = ray.remote(num_cpus=0, num_gpus=num_gpus, resources=resources or {})(Probe)
        actors = [probe.remote() for _ in range(count)]
        refs = [actor.node.remote() for actor in actors]
        ready: list = []
        last_change = time.monotonic()
        while time.monotonic() - last_change < settle_s and len(ready) < count:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
            if len(ready) != getattr(self, "_ready", -1):
                self._ready, last_change = len(ready), time.monotonic()
        placed = [ray.get(ref) if ref in ready else None for ref in refs]
        for actor in actors:
            ray.kill(actor)
        return placed

    def op_remove_node(self, name: str) -> float:
        """Kill a worker node: its raylet, object store and every worker process on it."""
        killed = time.time()
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)
        return killed

    def op_deploy(self, config: dict) -> str:
        """Deploy raysight's app (ingress + models, as `build_app` does) with the models'
        deployments running TallyingModelServer; return the app's base URL."""
        from ray import serve

        from serve_app.app import LOGGING_CONFIG, ingress_deployment, model_deployment
        from serve_app.config import ServeConfig

        # One proxy on the head: every node of this cluster is on the same machine, so a
        # proxy per node would fight over one port.
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": "127.0.0.1", "port": self.http_port})
        served = ServeConfig.from_mapping({"port": self.http_port, **config})
        handles = {
            model.name: model_deployment(model).options(func_or_class=TallyingModelServer)
            .bind(model.spec, model.deployment.torch_threads)
            for model in served.models
        }
        serve.run(ingress_deployment(served).bind(served, handles), name=served.app_name,
                  route_prefix=served.route_prefix, logging_config=LOGGING_CONFIG)
        return f"http://127.0.0.1:{self.http_port}{served.route_prefix.rstrip('/')}"

    def op_replicas(self, app: str, deployment: str) -> dict:
        from ray import serve

        status = serve.status()
        application = status.applications.get(app)
        if application is None:
            return {}
        states = application.deployments[deployment].replica_states
        return {str(getattr(state, "value", state)): count for state, count in states.items()}

    def op_apps(self) -> list[str]:
        from ray import serve

        return sorted(serve.status().applications)

    def op_delete_app(self, app: str) -> None:
        from ray import serve

        serve.delete(app)

    def op_actors(self, repr_part: str) -> list[dict]:
        """Every actor (alive or dead) whose repr contains `repr_part` (Ray Data's pool actors
        are all `_MapWorker`s; their repr names the stage: 'MapWorker(MapBatches(ModelStage))'),
        with the node it runs or ran on. Read from the GCS's actor table (no dashboard here)."""
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        accessor = state._connect_and_get_accessor()
        names = {n["node_id"]: n["node"] for n in self.op_nodes()}
        found = []
        for raw in accessor.get_actor_table(None, None):
            actor = gcs_pb2.ActorTableData.FromString(raw)
            if repr_part in actor.repr_name:
                node_id = actor.address.node_id.hex()
                found.append({
                    "actor_id": actor.actor_id.hex(), "repr": actor.repr_name,
                    "state": gcs_pb2.ActorTableData.ActorState.Name(actor.state),
                    "node_id": node_id, "node": names.get(node_id, "unknown"),
                    "restarts": actor.num_restarts,
                })
        return found

    def close(self) -> None:
        import ray

        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - Serve may never have started
            pass
        ray.shutdown()
        self.cluster.shutdown()


def agent_main() -> None:
    settings = json.loads(sys.argv[1])
    # Replies go down a pipe of their own: Ray prints to stdout too (a raylet's death notice
    # can land in the middle of a line).
    replies = os.fdopen(settings["reply_fd"], "w")

    def reply(message: dict) -> None:
        replies.write(REPLY + json.dumps(message) + "\n")
        replies.flush()

    agent = Agent(settings["workers"], settings["http_port"])
    reply({"ok": True, "result": agent.cluster.address})
    try:
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "close":
                break
            try:
                result = getattr(agent, "op_" + request["op"])(**request.get("args", {}))
                answer = {"ok": True, "result": result}
            except Exception as exc:  # noqa: BLE001 - sent back to the test, which fails
                answer = {"ok": False, "error": f"{exc!r}\n{traceback.format_exc()}"}
            reply(answer)
    finally:
        agent.close()


# --- the test side ------------------------------------------------------------------------


class MultiNodeCluster:
    """The test's handle on the agent process and its cluster."""

    def __init__(self, workers: list[str], http_port: int, env: dict[str, str], log: Path):
        self.log = open(log, "w")
        self.env = env
        self.lock = threading.Lock()
        read_end, write_end = os.pipe()
        settings = json.dumps({"workers": workers, "http_port": http_port, "reply_fd": write_end})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.multinode", settings], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, text=True,
            start_new_session=True, pass_fds=(write_end,),
        )
        os.close(write_end)
        self.replies = os.fdopen(read_end, "r")
        self.address = self._reply(timeout=180)
        self.http_port = http_port

    def _reply(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.replies.readline()
            if not line:
                raise RuntimeError(f"the cluster agent exited: see {self.log.name}")
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if not reply["ok"]:
                    raise RuntimeError(reply["error"])
                return reply["result"]
        raise TimeoutError(f"no answer from the cluster agent in {timeout} s")

    def call(self, op: str, timeout: float = 300, **args) -> Any:
        with self.lock:
            self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.process.stdin.flush()
            return self._reply(timeout)

    def job_env(self) -> dict[str, str]:
        return {**self.env, "RAY_ADDRESS": self.address}

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, 9)
                self.process.wait()
            self.log.close()
            self.replies.close()


def tally_folder(root: Path) -> Path:
    folder = root / f"tally-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    return folder


if __name__ == "__main__":
    agent_main()
