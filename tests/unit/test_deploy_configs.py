"""cluster.yaml and the KubeRay manifests are checked with what runs them: Ray's own cluster
schema, raysight's ServeConfig, and the flags of the commands they name."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysight.placement import ClusterNode
from serve_app.config import ServeConfig
from serve_app.placement import plan_serve_placement

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"


def help_text(argv: list[str]) -> str:
    """What `argv --help` prints: `raysight ...` or `python -m module ...`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        if argv[0] == "raysight":
            from raysight.cli import main

            main([*argv[1:], "--help"])
        else:
            assert argv[:2] == ["python", "-m"], argv
            importlib.import_module(argv[2]).main(["--help"])
    assert exited.value.code in (0, None), f"{argv} --help exited with {exited.value.code}"
    return out.getvalue()


def check_command(command: str) -> None:
    """The command exists and knows every --flag the line gives it."""
    words = shlex.split(command)
    program = words[:2] if words[0] == "raysight" else words[:3]
    text = help_text(program)
    flags = [w.split("=")[0] for w in words if w.startswith("--")]
    unknown = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not unknown, f"{command!r}: {program} has no {unknown}"


def raysight_commands(text: str) -> list[str]:
    """The raysight command lines a file names: `raysight <sub> --...` and
    `python -m batch_jobs.<job> ...` (continued over `\\` line ends and `#` comment lines)."""
    joined = re.sub(r"\\\n#?\s*", " ", text)
    found = re.findall(r"((?:raysight [a-z]+ (?=--)|python -m batch_jobs\.[a-z_]+)[^\n\"`]*)",
                       joined)
    return [line.strip() for line in found]


# --- cluster.yaml ------------------------------------------------------------------------


def validated_cluster(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_cluster_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = validated_cluster(config)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert sorted(t["resources"]["GPU"] for t in gpu_types.values()) == [1, 4]
    assert all(t["max_workers"] >= t["min_workers"] for t in gpu_types.values())


def test_the_schema_check_is_real_an_unknown_key_is_refused():
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_1x"]["gpus_please"] = 1
    with pytest.raises(Exception, match="gpus_please"):
        validated_cluster(config)


def test_cluster_yaml_installs_cuda_torch_and_raysight_on_every_node():
    config = yaml.safe_load(CLUSTER.read_text())
    setup = " ".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "download.pytorch.org/whl/cu" in setup
    assert "pip install" in setup and "/home/ubuntu/raysight" in setup
    assert config["file_mounts"]["/home/ubuntu/raysight"] == "."
    assert any("--num-cpus=0" in command for command in config["head_start_ray_commands"])


def test_every_raysight_command_cluster_yaml_names_exists_with_its_flags():
    commands = raysight_commands(CLUSTER.read_text())
    assert any(c.startswith("python -m batch_jobs.caption") for c in commands), commands
    assert any(c.startswith("raysight serve") for c in commands), commands
    for command in commands:
        check_command(command)
    assert (ROOT / "serve_app" / "config.yaml").is_file()  # what `serve deploy` is given


def start_environment(command: str) -> dict[str, str]:
    """The VAR=value assignments in front of a `ray start` command line."""
    words = shlex.split(command)
    start = words.index("ray")
    assert words[start:start + 2] == ["ray", "start"], command
    return dict(word.split("=", 1) for word in words[:start])


def test_every_cluster_node_starts_ray_with_token_auth_and_the_shared_token_file():
    config = yaml.safe_load(CLUSTER.read_text())
    starts = [command for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for command in config[key] if "ray start" in command]
    assert len(starts) == 2, starts
    token_files = set()
    for command in starts:
        env = start_environment(command)
        assert env["RAY_AUTH_MODE"] == "token", command
        token_files.add(env["RAY_AUTH_TOKEN_PATH"])
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == \
            "serve_app.proxy_edge:proxy_middlewares"
    # One token for every node: the file the launcher copies from the user's own token.
    [token_file] = token_files
    assert config["file_mounts"][token_file] == "~/.ray/auth_token"
    assert "disabled" not in CLUSTER.read_text().split("cluster_name:")[1]


def test_a_node_whose_token_file_is_missing_cannot_run_ray_without_auth(tmp_path):
    # What cluster.yaml relies on: with RAY_AUTH_MODE=token, an unreadable
    # RAY_AUTH_TOKEN_PATH is an error in Ray's token loader, not a fall-back to no token.
    check = ("from ray._raylet import AuthenticationTokenLoader as L\n"
             "print(L.instance().has_token(ignore_auth_mode=True))")
    env = {"RAY_AUTH_MODE": "token", "PATH": "/usr/bin:/bin"}
    missing = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                             env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN_PATH" in missing.stderr
    (tmp_path / "token").write_text("a-shared-token")
    present = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                             env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    assert present.stdout.strip() == "True", present.stderr


# --- KubeRay -----------------------------------------------------------------------------


def ray_containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("manifest, cluster_key", [("rayservice.yaml", "rayClusterConfig"),
                                                   ("rayjob.yaml", "rayClusterSpec")])
def test_kuberay_clusters_run_ray_with_token_auth_from_a_secret(manifest, cluster_key):
    cluster = yaml.safe_load((KUBERAY / manifest).read_text())["spec"][cluster_key]
    # KubeRay's authOptions: the operator sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from
    # the named Secret in every Ray container, and presents the token itself.
    assert cluster["authOptions"] == {"mode": "token", "secretName": "raysight-ray-token"}
    assert tuple(int(part) for part in cluster["rayVersion"].split(".")) >= (2, 52)
    for container in ray_containers(cluster):
        env = {item["name"]: item for item in container.get("env", [])}
        # Nothing turns auth off or pins another token beside the operator's.
        assert env.get("RAY_AUTH_MODE", {}).get("value", "token") == "token", manifest
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_TOKEN_PATH" not in env, manifest
    assert "kubectl create secret generic raysight-ray-token" in (KUBERAY / manifest).read_text()


def gpu_worker_nodes(cluster_spec: dict) -> list[ClusterNode]:
    """The worker nodes a RayCluster spec can grow to, with their GPUs (simulated)."""
    nodes = []
    for group in cluster_spec["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        gpus = float(limits.get("nvidia.com/gpu", 0))
        assert float(group["rayStartParams"].get("num-gpus", gpus)) == gpus
        for i in range(group["maxReplicas"]):
            nodes.append(ClusterNode(f"{group['groupName']}-{i}", cpus=float(limits["cpu"]),
                                     gpus=gpus))
    return nodes


def test_rayservice_deploys_a_valid_raysight_serve_config_that_fits_its_gpu_workers():
    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    [app] = serve["applications"]
    assert app["import_path"] == "serve_app.app:app_builder"
    config = ServeConfig.from_mapping(app["args"], source="rayservice.yaml")
    assert all(served.deployment.num_gpus > 0 for served in config.models)
    assert all(served.spec.device == "cuda" for served in config.models)
    assert config.indexes[0].path.startswith("s3://")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    placement = plan_serve_placement(config, gpu_worker_nodes(cluster))
    assert len(placement["Qwen2-VL-2B-Instruct"]) == 4  # autoscaling's max_replicas


def test_rayjob_runs_a_caption_job_from_object_storage_with_known_flags():
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    words = shlex.split(entrypoint)
    assert words[:3] == ["python", "-m", "batch_jobs.caption"]
    flags = dict(zip(words[3::2], words[4::2]))
    assert flags["--input"].startswith("s3://") and flags["--output"].startswith("s3://")
    assert "AWS_SECRET_ACCESS_KEY" not in entrypoint
    check_command(entrypoint)
    nodes = gpu_worker_nodes(job["spec"]["rayClusterSpec"])
    assert sum(node.gpus for node in nodes) >= float(flags["--num-gpus"])
