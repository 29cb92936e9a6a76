"""Jobs and /search on object storage: a real S3 API server (moto in server mode) on
127.0.0.1, reached with the standard AWS environment variables, as a user's cluster would
reach S3 or an S3-compatible store. Images and tables are read from it; Parquet parts, the
`_raysight_job.json` resume record and the index are written to it; resume works there; and
no message shows the credentials."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysight.shapes import write_shapes_folder
from tests.api_server import free_port
from tests.integration.ray_head import ray_head

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET = "raysight-test"
SECRET = "s3cret-Raysight-9f8e7d6c5b4a"
KEY_ID = "AKIARAYSIGHTTEST0001"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API server with one bucket; the AWS variables point this process at it."""
    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
                 "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.3)
        yield client
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)
        log.close()


def upload_folder(client, folder: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            key = f"{prefix}/{path.name}"
            client.upload_file(str(path), BUCKET, key)
            keys.append(key)
    return keys


def keys_under(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def read_parts(client, prefix: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for key in keys_under(client, prefix):
        if key.rsplit("/", 1)[-1].startswith("part-"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            tables.append(pq.read_table(io.BytesIO(body)))
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def cluster(s3):
    """A Ray head whose nodes have the AWS variables, as a cluster's nodes would (or an IAM
    role); the jobs join it with --address. Yields its address."""
    with ray_head(num_cpus=2, env=dict(os.environ)) as address:
        yield address


def run_job(cluster: str, job: str, *flags: str) -> dict:
    """`python -m batch_jobs.JOB FLAGS --json` joining `cluster`; its summary."""
    done = subprocess.run(
        [sys.executable, "-m", f"batch_jobs.{job}", *flags, "--address", cluster,
         "--no-progress", "--json"],
        cwd=REPO, env=dict(os.environ), capture_output=True,
        text=True, timeout=240,
    )
    logs = done.stdout + done.stderr
    assert SECRET not in logs
    assert done.returncode == 0, logs[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def images_on_s3(s3, tmp_path_factory):
    folder = write_shapes_folder(tmp_path_factory.mktemp("images"), 30, seed=11, corrupt=1)
    upload_folder(s3, folder, "images")
    return folder


def test_an_embed_job_reads_images_from_s3_and_writes_parts_and_manifest_there(
        s3, images_on_s3, cluster):
    summary = run_job(cluster, "embed", "--model", "builtin:shapes-clip", "--input",
                      f"s3://{BUCKET}/images/", "--output", f"s3://{BUCKET}/embed-out",
                      "--rows-per-file", "8")
    images = sorted(p.name for p in images_on_s3.glob("*.png"))
    assert summary["rows"] == len(images) == 31 and summary["failures"] == 1  # one corrupt
    keys = keys_under(s3, "embed-out/")
    assert "embed-out/_raysight_job.json" in keys and "embed-out/_raysight_summary.json" in keys
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="embed-out/_raysight_job.json")
                          ["Body"].read())
    assert manifest["job"] == "embed" and manifest["input"] == f"s3://{BUCKET}/images/"
    table = read_parts(s3, "embed-out/")
    paths = table["path"].to_pylist()
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == images
    assert sum(v is not None for v in table["embedding"].to_pylist()) == 30


def test_a_resumed_job_on_s3_writes_only_the_rows_not_there_yet(s3, images_on_s3, cluster,
                                                                tmp_path):
    # Five more images arrive; the re-run reads the resume record and the finished parts
    # from the store and embeds only the new five.
    more = write_shapes_folder(tmp_path / "more", 5, seed=12)
    for path in sorted(more.glob("*.png")):
        s3.upload_file(str(path), BUCKET, f"images/late_{path.name}")
    summary = run_job(cluster, "embed", "--model", "builtin:shapes-clip", "--input",
                      f"s3://{BUCKET}/images/", "--output", f"s3://{BUCKET}/embed-out")
    assert (summary["rows"], summary["skipped"], summary["output_rows"]) == (5, 31, 36)
    paths = read_parts(s3, "embed-out/")["path"].to_pylist()
    assert len(paths) == len(set(paths)) == 36
    assert sum("late_" in path for path in paths) == 5


def test_a_table_on_s3_with_image_paths_on_s3_is_classified(s3, images_on_s3, cluster,
                                                             tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in images_on_s3.glob("img_*.png"))[:10]
    table = pa.table({"id": [f"row-{i}" for i in range(10)], "image": names})
    local = tmp_path / "table.parquet"
    pq.write_table(table, local)
    s3.upload_file(str(local), BUCKET, "tables/rows.parquet")
    summary = run_job(cluster, "classify", "--model", "builtin:shapes-clip", "--input",
                      f"s3://{BUCKET}/tables/rows.parquet", "--output",
                      f"s3://{BUCKET}/classify-out", "--labels", "a circle,a square",
                      "--image-root", f"s3://{BUCKET}/images")
    assert summary["rows"] == 10 and summary["failures"] == 0, summary
    out = read_parts(s3, "classify-out/")
    assert sorted(out["id"].to_pylist()) == sorted(table["id"].to_pylist())
    assert set(out["label"].to_pylist()) <= {"a circle", "a square"}


def test_an_index_built_into_s3_is_loaded_from_s3_by_search(s3):
    from fastapi.testclient import TestClient

    from raysight.spec import ModelSpec
    from serve_app.config import IndexConfig, ServeConfig
    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    done = subprocess.run(
        [sys.executable, "-m", "batch_jobs.index", "--input", f"s3://{BUCKET}/embed-out",
         "--output", f"s3://{BUCKET}/index/shapes"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "index: 35 vectors" in done.stdout  # 36 rows, one corrupt image without a vector
    assert keys_under(s3, "index/shapes/") == [
        "index/shapes/ids.json", "index/shapes/index.faiss", "index/shapes/meta.json"]
    spec = ModelSpec(model="builtin:shapes-clip")
    config = ServeConfig.for_specs([spec], indexes=[IndexConfig(path=f"s3://{BUCKET}/index/shapes")])
    gateway = Gateway(config, {spec.served_name: LocalClient(ModelServer(spec))})
    with TestClient(build_http_api(gateway)) as client:
        answer = client.post("/search", json={"text": "a red circle", "k": 3})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 3 and all(r["id"].endswith(".png") for r in results)


def test_errors_for_a_wrong_bucket_or_an_inline_key_never_show_the_secret(s3, cluster):
    from raysight.errors import ConfigError
    from raysight.index import VectorIndex
    from raysight.storage import open_filesystem

    with pytest.raises(ConfigError) as missing:
        VectorIndex.load("s3://no-such-bucket-here/index")
    assert "no-such-bucket-here" in missing.value.message and SECRET not in missing.value.message
    with pytest.raises(ConfigError) as inline:
        open_filesystem(f"s3://{KEY_ID}:{SECRET}@{BUCKET}/x?bogus_option=1")
    assert SECRET not in inline.value.message and KEY_ID not in inline.value.message
    assert "***@" in inline.value.message
    # A whole job run that fails on S3: nothing it prints shows the secret.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "wrong", "RAY_ADDRESS": cluster}
    done = subprocess.run(
        [sys.executable, "-m", "batch_jobs.embed", "--model", "builtin:shapes-clip",
         "--input", f"s3://{BUCKET}/no-such-prefix/", "--output", f"s3://{BUCKET}/never"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    logs = done.stdout + done.stderr
    assert done.returncode != 0 and SECRET not in logs, logs[-2000:]
    assert "no-such-prefix" in logs
