"""Coordinator API under load: p50/p99 of the task list and the patient history with a large
store, 50 concurrent clients, on each engine, with one or more API processes.

    .venv/bin/python bench/api_load.py [--engines sqlite redis] [--copies 493] [--clients 50]
        [--workers 1 2] [--rounds 3] [--sqlite-file PATH] [--redis-prefix PREFIX] [--profile 200]

The store: the packaged sample population ingested once for real (parse, profiles, rules), then
copied `--copies` times with rewritten ids and references (bench/bulk.py's scheme) straight
through the storage protocol: resources with `put_resource`, each copy's tasks with
`upsert_task`. 493 copies hold >= 100,000 tasks and ~14,800 patients (the issue asks for 100k
tasks and 10k patients). The hospital MRN system is trusted, so every history request links
records across sources the way a real installation does. A filled store can be kept and
reused: `--sqlite-file PATH` (filled when missing), `--redis-prefix PREFIX` (filled when empty;
its keys are left in place for the next run: `--drop-redis PREFIX` deletes them). Without those
the store is temporary and deleted at the end.

Service time first (`--profile N`, 0 skips it): N requests one after the other through the
app in this process (httpx.ASGITransport, no network, no other load): CPU ms per request (this
process, every thread; includes the in-process client's share) and wall-clock mean/p50/p99 ms
per endpoint. The CPU figure is what a request costs, and moves little with the machine's load.
`--seconds 0` stops there.

Then the server: `fhir-bridge serve [--workers N]` in a child process, for each `--workers`
value (auth off, no sync). wrk drives two load shapes per endpoint, each for `--seconds`
(paced `--rounds` times: the round with the median p99 is reported, every round is kept):
- closed: every client sends its next request as soon as the previous one answered. Latency
  then includes queueing behind the other 49: p99 ~ 50 / throughput. This is saturation.
- paced: every client waits a random 0-1 s between requests (50 coordinators clicking, about
  100 requests/s offered). Latency is then service time plus little queueing.
Results go to bench/results/api-load-<timestamp>.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bulk  # bench/bulk.py, next to this file
import httpx

from fhir_bridge.config import Settings, SourceConfig, StorageConfig
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore, open_store
from fhir_bridge.store.base import Store
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import content_hash
from fhir_bridge.tasks.model import TaskDraft

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
SOURCE = "ehr"
MRN = "http://hospital.smarthealthit.org"  # the sample's MRN system
CONFIG_ROOT = Path(os.environ.get("BENCH_CONFIG_ROOT", ROOT))  # mappings/ and profiles/ under it
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def settings_for(storage: StorageConfig) -> Settings:
    """The served bridge: one source (never contacted), auth and rate limit off."""
    return Settings(
        sources=(SourceConfig(name=SOURCE, base_url="http://127.0.0.1:9/ehr"),),
        storage=storage,
        mappings_dir=CONFIG_ROOT / "mappings",
        profiles_dir=CONFIG_ROOT / "profiles",
        auth={"enabled": False, "rate_limit_per_minute": 0},
        patients={"trusted_identifier_systems": [MRN]},
    )


# -- the store ---------------------------------------------------------------------------------
def template() -> tuple[list[dict[str, Any]], list[TaskDraft]]:
    """The sample population after one real ingest: its resources and its tasks as drafts."""
    from fhir_bridge.sandbox import sample_data_dir
    from fhir_bridge.sandbox.seed import load_ndjson

    settings = settings_for(StorageConfig(path=Path(":memory:")))
    bridge = Bridge(settings, store=SqliteStore(":memory:"))
    try:
        for rtype in dependency_order(bridge.settings.sources[0].resource_types, bridge.rules):
            path = sample_data_dir() / f"{rtype}.ndjson"
            if path.exists():
                bridge.ingestor.ingest(SOURCE, list(load_ndjson([path])), rtype, initial=True)
        store = bridge.store
        resources = [r.body for t in store.resource_counts(SOURCE) for r in store.iter_resources(t)]
        drafts = [
            TaskDraft(
                rule_id=t.rule_id,
                source=t.source,
                focus_type=t.focus_type,
                focus_id=t.focus_id,
                focus_version=t.focus_version,
                patient=t.patient,
                queue=t.queue,
                kind=t.kind,
                title=t.title,
                priority=t.priority,
                due=t.due,
                description=t.description,
                labels=t.labels,
            )
            for t in bridge.store.iter_tasks()
        ]
        return resources, drafts
    finally:
        bridge.close()


def fill(store: Store, copies: int) -> dict[str, Any]:
    """Write `copies` rewritten copies of the template into `store`; figures of the build."""
    resources, drafts = template()
    start = time.perf_counter()
    patients: list[str] = []
    for k in range(copies):
        suffix = f"-c{k}"
        with store.batch():
            for body in resources:
                copy = bulk._rewrite(body, suffix) | {"id": f"{body['id']}{suffix}"}
                if copy["resourceType"] == "Patient":
                    patients.append(copy["id"])
                    for ident in copy.get("identifier") or []:  # keep MRNs distinct per copy
                        if ident.get("system") == MRN and "value" in ident:
                            ident["value"] = f"{ident['value']}{suffix}"
                store.put_resource(SOURCE, copy, content_hash(copy))
            for draft in drafts:
                store.upsert_task(
                    replace(
                        draft,
                        focus_id=f"{draft.focus_id}{suffix}",
                        patient=f"{draft.patient}{suffix}" if draft.patient else None,
                    ),
                    NOW,
                )
        if k % 50 == 49:
            print(f"  built {k + 1}/{copies} copies", file=sys.stderr, flush=True)
    return {
        "copies": copies,
        "tasks": store.list_tasks(limit=0).total,
        "patients": len(patients),
        "resources": sum(store.resource_counts(SOURCE).values()),
        "build_s": time.perf_counter() - start,
        "patient_ids": patients,
        "queues": sorted(store.queue_counts()),
    }


# -- the server --------------------------------------------------------------------------------
def config_file(storage: StorageConfig, port: int, folder: Path) -> Path:
    """The settings `fhir-bridge serve` reads: `settings_for`, listening on `port`."""
    settings = {
        "sources": [{"name": SOURCE, "base_url": "http://127.0.0.1:9/ehr"}],
        "storage": storage.model_dump(mode="json"),
        "mappings_dir": str(CONFIG_ROOT / "mappings"),
        "profiles_dir": str(CONFIG_ROOT / "profiles"),
        "auth": {"enabled": False, "rate_limit_per_minute": 0},
        "patients": {"trusted_identifier_systems": [MRN]},
        "api": {"host": "127.0.0.1", "port": port},
        "log_level": "WARNING",
    }
    path = folder / "bench-api.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    storage: StorageConfig, workers: int, folder: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`fhir-bridge serve` over `storage` with `workers` processes; its process and URL."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("fhir-bridge"))]
    command += ["-c", str(config_file(storage, port, folder)), "serve"]
    if workers != 1:
        command += ["--workers", str(workers)]
    proc = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                time.sleep(2 if workers > 1 else 0)  # the other workers finish starting
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API server did not start")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # busy answering requests wrk gave up on
        proc.kill()
        proc.wait()


def service_time(
    storage: StorageConfig, endpoints: dict[str, list[str]], requests: int
) -> dict[str, Any]:
    """Per endpoint, `requests` requests one at a time through the app in this process."""
    import asyncio

    from fhir_bridge.api import create_app

    bridge = Bridge(settings_for(storage), clock=lambda: NOW)
    app = create_app(bridge)

    async def measure(paths: list[str]) -> dict[str, float]:
        rng = random.Random(5)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for path in paths[:20]:  # warm-up
                (await client.get(path)).raise_for_status()
            times = []
            cpu = time.process_time()
            for _ in range(requests):
                started = time.perf_counter()
                (await client.get(rng.choice(paths))).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
            cpu = time.process_time() - cpu
        times.sort()
        return {
            "requests": requests,
            # CPU time of this process (every thread) per request: what a request costs the
            # server, hardly moved by other programs on the machine, unlike wall-clock time.
            "cpu_ms": cpu * 1000 / requests,
            "mean_ms": sum(times) / len(times),
            "p50_ms": times[len(times) // 2],
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        }

    try:
        return {name: asyncio.run(measure(paths)) for name, paths in endpoints.items()}
    finally:
        bridge.close()


# -- the load ----------------------------------------------------------------------------------
# wrk (Debian package `wrk`) drives the load: a Python asyncio+httpx driver saturates its own
# core long before the server at 50 connections and reports its own queueing as latency.
_LUA = """
local paths = {%(paths)s}
math.randomseed(%(seed)d)
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
%(delay)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%%d,"errors":%%d,"non2xx":%%d,"duration_us":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%f}\\n',
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def load(url: str, paths: list[str], clients: int, seconds: float, paced: bool) -> dict[str, Any]:
    """`clients` connections requesting random `paths` for `seconds` (wrk); latency figures.

    Paced: each connection waits a random 0-1,000 ms before each request (not counted in its
    latency), as coordinators clicking do.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench/api_load.py needs wrk: apt-get install wrk")
    script = _LUA % {
        "paths": ", ".join(json.dumps(p) for p in paths),
        "seed": 7,
        "delay": "delay = function() return math.random(0, 1000) end" if paced else "",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        duration = f"-d{max(1, round(seconds))}s"
        command = [wrk, "-t1", f"-c{clients}", duration, "--timeout", "30s", "-s", handle.name]
        out = subprocess.run(
            [*command, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {
        "requests": raw["requests"],
        "errors": raw["errors"] + raw["non2xx"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median p99, with every round's figures kept under `rounds`.

    On a shared VM a burst of noise from elsewhere can land in one 20-second window and move
    its p99 several-fold; the median of a few rounds is the service's figure, and the worst
    round stays in the results next to it.
    """
    ordered = sorted(rounds, key=lambda r: r["p99_ms"])
    median = dict(ordered[len(ordered) // 2])
    if len(rounds) > 1:
        median["rounds"] = rounds
        median["worst_p99_ms"] = ordered[-1]["p99_ms"]
    return median


def run_engine(
    name: str, storage: StorageConfig, store: Store, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    if store.is_empty():
        print(f"{name}: building the store ...", file=sys.stderr, flush=True)
        built = fill(store, args.copies)
    else:  # a kept SQLite file or Redis prefix
        built = {
            "tasks": store.list_tasks(limit=0).total,
            "patient_ids": [r.id for r in store.iter_resources("Patient")],
            "queues": sorted(store.queue_counts()),
        }
        built["patients"] = len(built["patient_ids"])
    store.close()
    patients = built.pop("patient_ids")
    queues = built.pop("queues")
    rng = random.Random(11)
    endpoints = {
        "task_list": [f"/tasks?queue={q}&status=open&limit=50" for q in queues]
        + [f"/tasks?patient=Patient/{p}" for p in rng.sample(patients, min(200, len(patients)))],
        "patient_history": [
            f"/patients/{SOURCE}/{p}/history" for p in rng.sample(patients, min(500, len(patients)))
        ],
    }
    result: dict[str, Any] = {"store": built}
    if args.profile:
        result["service_time"] = service_time(storage, endpoints, args.profile)
        for endpoint, figures in result["service_time"].items():
            print(
                f"  {name:<7} {endpoint:<16} in-process cpu {figures['cpu_ms']:6.2f} ms  "
                f"mean {figures['mean_ms']:6.2f} ms  "
                f"p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:6.2f} ms",
                file=sys.stderr,
                flush=True,
            )
    for workers in args.workers if args.seconds > 0 else []:  # --seconds 0: service time only
        proc, url = start_server(storage, workers, folder)
        try:
            for endpoint, paths in endpoints.items():
                for shape in ("paced", "closed"):
                    rounds = [
                        load(url, paths, args.clients, args.seconds, paced=shape == "paced")
                        for _ in range(args.rounds if shape == "paced" else 1)
                    ]
                    figures = _median_round(rounds)
                    result[f"{endpoint}_{shape}_w{workers}"] = figures
                    each = ", ".join(f"{r['p99_ms']:.1f}" for r in rounds)
                    spread = f"  (rounds' p99 {each})" if len(rounds) > 1 else ""
                    print(
                        f"  {name:<7} w{workers} {endpoint:<16} {shape:<6} "
                        f"p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  "
                        f"{figures['rps']:6.0f} req/s  errors {figures['errors']}{spread}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            stop_server(proc)
    return result


def drop_redis(prefix: str) -> int:
    """Delete every key of the Redis store under `prefix`; how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match="{" + prefix + "}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--copies", type=int, default=493, help="sample copies (203 tasks each)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="paced runs per figure (the median p99 is shown)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="API processes, one run per value"
    )
    parser.add_argument(
        "--profile", type=int, default=200, help="in-process requests per endpoint (0: skip)"
    )
    parser.add_argument(
        "--sqlite-file", type=Path, help="keep the SQLite store here; reused when it exists"
    )
    parser.add_argument(
        "--redis-prefix", help="keep the Redis store under this key prefix; reused when filled"
    )
    parser.add_argument("--drop-redis", metavar="PREFIX", help="delete a kept Redis store, exit")
    args = parser.parse_args()
    if args.drop_redis:
        print(f"deleted {drop_redis(args.drop_redis)} keys", file=sys.stderr)
        return
    configure_logging("WARNING")
    results: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            if engine == "sqlite":
                storage = StorageConfig(path=args.sqlite_file or Path(tmp) / "load.db")
            else:
                prefix = args.redis_prefix or f"bench-load-{uuid.uuid4().hex[:8]}"
                storage = StorageConfig(engine="redis", redis_url=REDIS_URL, key_prefix=prefix)
            store = open_store(storage)
            try:
                results[engine] = run_engine(engine, storage, store, args, Path(tmp))
            finally:
                if engine == "redis" and not args.redis_prefix:
                    drop_redis(storage.key_prefix)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"api-load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
