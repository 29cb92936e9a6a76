"""Reliability: ``raysight serve`` on the built-in models under a soak, an overload burst
and replica kills (``python -m bench --only reliability``, ~4 min).

One server process (its own private Ray, in a session of its own) serves builtin:shapes-vlm
on two replicas with a small queue (capacity = 2 replicas x 8 ongoing + 14 queued = 30
requests) and builtin:shapes-clip on one replica, with a small /search index of the CLIP's
vectors. Clients run in this process (asyncio, httpx):

- soak: ``soak_requests`` mixed requests (chat, /predict, embeddings, /classify, /search) from
  16 closed-loop clients: errors (any non-200), p50/p99 latency, and the replicas' resident
  memory (VmRSS) after a warm-up against after the soak;
- overload: 10 x the chat model's capacity, all at once: how many got 503, how fast the 503s
  came (p50/p99), the admitted requests' latency and whether every one succeeded, and whether
  the first request after the burst succeeded (this phase's client is bench/burst.py's raw
  HTTP/1.1 over connections opened first: httpx's own CPU per request was much of what it
  measured);
- replica kill: 8 closed-loop chat clients, then SIGKILL of one of the VLM's two replica
  processes (lost requests are retried on the other), and 8 embedding clients, then SIGKILL
  of the CLIP's only replica (its requests get 503 replica_lost until Serve restarts it):
  500s, 503s, and the seconds from the kill to the first success.

Timings share the machine with whatever else runs: the 1-minute load average is recorded
with each phase.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from bench.coldstart import _raysight_command, kill_session
from bench.loadgen import percentile
from bench.processes import cpu_by_role, replica_pids, rss_mb
from bench.report import row
from bench.servers import child_env, free_port, wait_until_up
from bench.settings import BenchSettings

SCENARIO = "reliability"
VLM, CLIP = "shapes-vlm", "shapes-clip"
VLM_REPLICAS, VLM_ONGOING, VLM_QUEUED = 2, 8, 14
CHAT_CAPACITY = VLM_REPLICAS * VLM_ONGOING + VLM_QUEUED
SOAK_CLIENTS = 16
KILL_CLIENTS = 8
# Soak mix: (route, weight); the cheap encoder routes carry most of the traffic.
SOAK_MIX = (("chat", 2), ("predict", 1), ("embeddings", 3), ("classify", 2), ("search", 2))


def _server_config(index: Path) -> dict:
    return {
        "models": [
            {"model": f"builtin:{VLM}", "max_batch_size": 8,
             "deployment": {"num_replicas": VLM_REPLICAS, "num_cpus": 0.5,
                            "max_ongoing_requests": VLM_ONGOING,
                            "max_queued_requests": VLM_QUEUED}},
            {"model": f"builtin:{CLIP}", "deployment": {"num_cpus": 0.5}},
        ],
        "indexes": [{"path": str(index), "name": "shapes"}],
    }


def _build_index(folder: Path) -> None:
    """A small index of the built-in CLIP's image vectors, for /search."""
    import numpy as np

    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex
    from raysight.shapes import make_shapes
    from raysight.spec import ModelSpec

    engine = build_engine(ModelSpec(model=f"builtin:{CLIP}"))
    images = make_shapes(32, seed=11)
    vectors = np.stack([r.vector for r in engine.run([EmbedRequest(image=i) for i, _ in images])])
    VectorIndex.build(vectors, [label.caption for _, label in images],
                      model=f"builtin:{CLIP}").save(folder)


class Bodies:
    """Request bodies per route, each with one of a few small JPEGs."""

    def __init__(self):
        from bench.payloads import chat_body, data_url, embedding_body, jpeg_images

        images = jpeg_images(16, size=96, seed=7)
        self.count = 0
        self.by_route = {
            "chat": [chat_body(VLM, image, 8) for image in images],
            "predict": [{"model": VLM, "prompt": "What color is the shape?",
                         "image": data_url(image).split(",", 1)[1]} for image in images],
            "embeddings": [embedding_body(CLIP, image) for image in images],
            "classify": [{"model": CLIP, "image": data_url(image),
                          "labels": ["a red circle", "a blue square", "a green triangle"]}
                         for image in images],
            "search": [{"text": text, "k": 3} for text in
                       ("a red circle", "a blue square", "a green triangle", "a shape")],
        }

    def next(self, route: str) -> bytes:
        self.count += 1
        options = self.by_route[route]
        return json.dumps(options[self.count % len(options)]).encode()


PATHS = {"chat": "/v1/chat/completions", "predict": "/predict", "embeddings": "/v1/embeddings",
         "classify": "/classify", "search": "/search"}


async def _post(http, url: str, route: str, body: bytes) -> tuple[int, float, str]:
    """(status, seconds, error code) of one request; a transport failure is status 0."""
    import httpx

    sent = time.perf_counter()
    try:
        response = await http.post(url + PATHS[route], content=body,
                                   headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return 0, time.perf_counter() - sent, type(exc).__name__
    seconds = time.perf_counter() - sent
    return response.status_code, seconds, _error_code(response.status_code, response.headers,
                                                      response.content)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


async def _soak(url: str, bodies: Bodies, total: int) -> dict:
    import httpx

    routes = [route for route, weight in SOAK_MIX for _ in range(weight)]
    statuses: Counter = Counter()
    latencies: list[float] = []
    issued = 0

    async def client(http) -> None:
        nonlocal issued
        while issued < total:
            route = routes[issued % len(routes)]
            issued += 1
            status, seconds, code = await _post(http, url, route, bodies.next(route))
            statuses[f"{route}:{status}{':' + code if code else ''}"] += 1
            latencies.append(seconds)

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(SOAK_CLIENTS)))
    errors = sum(n for key, n in statuses.items() if key.split(":")[1] != "200")
    return {"requests": len(latencies), "errors": errors, "statuses": dict(statuses),
            "seconds": time.perf_counter() - began, "p50_ms": 1000 * percentile(latencies, .5),
            "p99_ms": 1000 * percentile(latencies, .99)}


def _error_code(status: int, headers: dict[str, str], body: bytes) -> str:
    """The API error code of a non-200 answer ("" for a 200), as `_post` names it."""
    if status == 200:
        return ""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return "not-json"
    code = error.get("code", "") if isinstance(error, dict) else "flat"
    if status == 503 and "retry-after" not in headers:
        code += "+no-retry-after"
    return code


async def _burst(url: str, bodies: Bodies, count: int, session: int) -> dict:
    """`count` chats at once, after `count` /healthz at once (the floor: the same number of
    trivial requests through the proxy and the ingress), with each phase's CPU by process.
    The client is bench/burst.py's (a few µs per request; see there why not httpx)."""
    from bench.burst import open_connections

    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    # Connections first, so the burst measures the server and not TCP handshakes.
    connections = await open_connections(host, int(port), count)
    try:
        cpu_start = cpu_by_role(session)
        floor = await asyncio.gather(*(c.request("GET", "/healthz") for c in connections))
        cpu_floor = cpu_by_role(session)
        chats = [bodies.next("chat") for _ in connections]
        answers = await asyncio.gather(*(c.request("POST", PATHS["chat"], body)
                                         for c, body in zip(connections, chats)))
        cpu_chats = cpu_by_role(session)
        after = await connections[0].request("POST", PATHS["chat"], bodies.next("chat"))
    finally:
        for connection in connections:
            connection.close()
    coded = [(a.status, a.seconds, _error_code(a.status, a.headers, a.body)) for a in answers]
    refused = [s for status, s, code in coded if status == 503 and code == "overloaded"]
    admitted = [s for status, s, _ in coded if status == 200]
    other = Counter(f"{status}:{code}" for status, _, code in coded
                    if status != 200 and not (status == 503 and code == "overloaded"))
    return {"burst": count, "refused": len(refused), "admitted": len(admitted),
            "other": dict(other),
            "refused_p50_ms": 1000 * percentile(refused, .5),
            "refused_p99_ms": 1000 * percentile(refused, .99),
            "admitted_p50_ms": 1000 * percentile(admitted, .5),
            "admitted_p99_ms": 1000 * percentile(admitted, .99),
            "first_after": after.status,
            "first_after_code": _error_code(after.status, after.headers, after.body),
            "healthz_p50_ms": 1000 * percentile([a.seconds for a in floor], .5),
            "healthz_p99_ms": 1000 * percentile([a.seconds for a in floor], .99),
            "cpu_s_healthz": {role: round(cpu_floor[role] - cpu_start.get(role, 0), 2)
                              for role in cpu_floor},
            "cpu_s_chats": {role: round(cpu_chats[role] - cpu_floor.get(role, 0), 2)
                            for role in cpu_chats}}


async def _kill_under_load(url: str, bodies: Bodies, route: str, pid: int,
                           limit_s: float) -> dict:
    """KILL_CLIENTS closed-loop clients on `route`; SIGKILL `pid` after 3 s; go on until a
    request sent after the kill succeeds and 3 s more have passed (or `limit_s`). Recovery:
    seconds from the kill to the first success of a request sent after it."""
    import httpx

    statuses: Counter = Counter()
    killed_at: float | None = None
    first_success: float | None = None
    stop = False

    async def client(http) -> None:
        nonlocal first_success
        while not stop:
            sent = time.perf_counter()
            status, _, code = await _post(http, url, route, bodies.next(route))
            if killed_at is not None and sent >= killed_at:
                statuses[f"{status}{':' + code if code else ''}"] += 1
            elif killed_at is not None:  # in flight at the kill
                statuses[f"in-flight {status}{':' + code if code else ''}"] += 1
            if status == 200 and killed_at is not None and sent >= killed_at \
                    and first_success is None:
                first_success = time.perf_counter()
            if status != 200:
                await asyncio.sleep(0.05)  # a client honouring a 503 does not hammer

    async with httpx.AsyncClient(timeout=120) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(KILL_CLIENTS)]
        await asyncio.sleep(3)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.perf_counter()
        while time.perf_counter() - killed_at < limit_s and (
                first_success is None or time.perf_counter() - first_success < 3):
            await asyncio.sleep(0.1)
        stop = True
        await asyncio.gather(*tasks)
    count = lambda status: sum(n for key, n in statuses.items()  # noqa: E731
                               if key.split(":")[0].split()[-1] == str(status))
    return {"statuses": dict(statuses), "500s": count(500), "503s": count(503),
            "recovery_s": None if first_success is None else first_success - killed_at}


PHASES = ("soak", "overload", "kill")


def reliability(settings: BenchSettings, log: Callable[[str], None],
                phases: tuple[str, ...] = PHASES) -> list[dict]:
    soak_total = 300 if settings.quick else 3000
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="raysight-reliability-") as scratch:
        index = Path(scratch) / "index"
        _build_index(index)
        config = Path(scratch) / "serve.yaml"
        config.write_text(json.dumps(_server_config(index)))  # JSON is YAML
        server_log = open(Path(scratch) / "server.log", "wb")
        process = subprocess.Popen(
            _raysight_command() + ["serve", "--serve-config", str(config), "--port", str(port)],
            stdout=server_log, stderr=subprocess.STDOUT, env=child_env(),
            start_new_session=True)
        try:
            wait_until_up(url + "/readyz", 240, process)
            return _phases(url, process.pid, soak_total, log, phases)
        except Exception:
            server_log.flush()
            log((Path(scratch) / "server.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            kill_session(process.pid)
            process.wait()
            server_log.close()


def _phases(url: str, session: int, soak_total: int, log: Callable[[str], None],
            phases: tuple[str, ...]) -> list[dict]:
    bodies = Bodies()
    rows: list[dict] = []
    replicas = {VLM: replica_pids(session, "model-" + VLM),
                CLIP: replica_pids(session, "model-" + CLIP)}
    if len(replicas[VLM]) != VLM_REPLICAS or len(replicas[CLIP]) != 1:
        raise RuntimeError(f"expected {VLM_REPLICAS} + 1 replica processes, found {replicas}")
    asyncio.run(_soak(url, bodies, 10 * SOAK_CLIENTS))  # warm-up: every route, every replica
    all_pids = replicas[VLM] + replicas[CLIP]
    rss_before = {pid: rss_mb(pid) for pid in all_pids}

    if "soak" in phases:
        rows += _soak_phase(url, bodies, soak_total, all_pids, rss_before, log)
    if "overload" in phases:
        rows += _overload_phase(url, bodies, session, log)
    if "kill" in phases:
        rows += _kill_phase(url, bodies, replicas, log)
    return rows


def _soak_phase(url, bodies, soak_total, all_pids, rss_before, log) -> list[dict]:
    load = _load()
    soak = asyncio.run(_soak(url, bodies, soak_total))
    rss_after = {pid: rss_mb(pid) for pid in all_pids}
    growth = max(100 * (rss_after[pid] - rss_before[pid]) / rss_before[pid] for pid in all_pids)
    log(f"  soak: {soak['requests']} requests in {soak['seconds']:.0f} s, {soak['errors']} "
        f"errors, p50 {soak['p50_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms; replica RSS "
        f"{sorted(round(v) for v in rss_before.values())} -> "
        f"{sorted(round(v) for v in rss_after.values())} MB (max growth {growth:+.1f}%); "
        f"load {load}")
    return [row(SCENARIO, "soak", "requests", soak["requests"]),
             row(SCENARIO, "soak", "errors", soak["errors"], statuses=soak["statuses"]),
             row(SCENARIO, "soak", "p50_ms", round(soak["p50_ms"], 1), unit="ms"),
             row(SCENARIO, "soak", "p99_ms", round(soak["p99_ms"], 1), unit="ms"),
             row(SCENARIO, "soak", "rss_growth_pct", round(growth, 2), unit="%",
                 rss_mb_before=[round(v) for v in rss_before.values()],
                 rss_mb_after=[round(v) for v in rss_after.values()]),
             row(SCENARIO, "soak", "load_average_1m", load)]


def _overload_phase(url, bodies, session, log) -> list[dict]:
    load = _load()
    burst = asyncio.run(_burst(url, bodies, 10 * CHAT_CAPACITY, session))
    log(f"  overload: {burst['burst']} chats at once (10 x capacity {CHAT_CAPACITY}): "
        f"{burst['refused']} x 503 in p50 {burst['refused_p50_ms']:.0f} / p99 "
        f"{burst['refused_p99_ms']:.0f} ms; {burst['admitted']} admitted, p50 "
        f"{burst['admitted_p50_ms']:.0f} / p99 {burst['admitted_p99_ms']:.0f} ms; other "
        f"{burst['other']}; first after: {burst['first_after']}; {burst['burst']} x /healthz "
        f"at once: p50 {burst['healthz_p50_ms']:.0f} / p99 {burst['healthz_p99_ms']:.0f} ms; "
        f"CPU s of the /healthz burst {burst['cpu_s_healthz']}, of the chat burst "
        f"{burst['cpu_s_chats']}; load {load}")
    return [row(SCENARIO, "overload", "burst", burst["burst"]),
             row(SCENARIO, "overload", "refused_503", burst["refused"]),
             row(SCENARIO, "overload", "refused_p50_ms", round(burst["refused_p50_ms"], 1),
                 unit="ms"),
             row(SCENARIO, "overload", "refused_p99_ms", round(burst["refused_p99_ms"], 1),
                 unit="ms"),
             row(SCENARIO, "overload", "admitted", burst["admitted"]),
             row(SCENARIO, "overload", "admitted_p50_ms", round(burst["admitted_p50_ms"], 1),
                 unit="ms"),
             row(SCENARIO, "overload", "admitted_p99_ms", round(burst["admitted_p99_ms"], 1),
                 unit="ms"),
             row(SCENARIO, "overload", "admitted_failed", sum(burst["other"].values()),
                 statuses=burst["other"]),
             row(SCENARIO, "overload", "first_after_ok", int(burst["first_after"] == 200)),
             row(SCENARIO, "overload", "healthz_p50_ms", round(burst["healthz_p50_ms"], 1),
                 unit="ms"),
             row(SCENARIO, "overload", "healthz_p99_ms", round(burst["healthz_p99_ms"], 1),
                 unit="ms", cpu_s_healthz_burst=burst["cpu_s_healthz"],
                 cpu_s_chat_burst=burst["cpu_s_chats"]),
             row(SCENARIO, "overload", "load_average_1m", load)]


def _kill_phase(url, bodies, replicas, log) -> list[dict]:
    rows = []
    for variant, route, pid, limit_s in (
            ("kill_1_of_2_replicas", "chat", replicas[VLM][0], 30),
            ("kill_only_replica", "embeddings", replicas[CLIP][0], 60)):
        load = _load()
        killed = asyncio.run(_kill_under_load(url, bodies, route, pid, limit_s))
        recovery = killed["recovery_s"]
        log(f"  {variant} ({route}): {killed['500s']} x 500, {killed['503s']} x 503, first "
            f"success {'never' if recovery is None else f'{recovery:.2f} s'} after the kill; "
            f"{killed['statuses']}; load {load}")
        rows += [row(SCENARIO, variant, "errors_500", killed["500s"],
                     statuses=killed["statuses"]),
                 row(SCENARIO, variant, "errors_503", killed["503s"]),
                 row(SCENARIO, variant, "recovery_s",
                     None if recovery is None else round(recovery, 2), unit="s"),
                 row(SCENARIO, variant, "load_average_1m", load)]
    return rows


if __name__ == "__main__":  # python -m bench.reliability [PHASE ...]: print the rows
    from bench.settings import FULL

    chosen = tuple(sys.argv[1:]) or PHASES
    print(json.dumps(reliability(FULL, print, chosen), indent=1), file=sys.stderr)
