"""Coordinator API under load: p50/p99 of the task list and the patient history with a large
store, 50 concurrent clients, on each engine.

    .venv/bin/python bench/api_load.py [--engines sqlite redis] [--copies 493] [--clients 50]

The store: the packaged sample population ingested once for real (parse, profiles, rules), then
copied `--copies` times with rewritten ids and references (bench/bulk.py's scheme) straight
through the storage protocol: resources with `put_resource`, each copy's tasks with
`upsert_task`. 493 copies hold >= 100,000 tasks and ~14,800 patients (the issue asks for 100k
tasks and 10k patients). The hospital MRN system is trusted, so every history request links
records across sources the way a real installation does.

The server runs `fhir-bridge`'s app under uvicorn in a child process (one worker, auth off):
the load generator (asyncio + httpx, one connection per client) does not share its GIL. Two
load shapes per endpoint, each for `--seconds`:
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
def serve(config: str, port: int) -> None:
    """Child process: the API over the store `config` names (JSON StorageConfig)."""
    import uvicorn

    from fhir_bridge.api import create_app

    configure_logging("WARNING")
    bridge = Bridge(settings_for(StorageConfig(**json.loads(config))), clock=lambda: NOW)
    uvicorn.run(
        create_app(bridge), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(storage: StorageConfig) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = storage.model_dump_json()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", config, str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API server did not start")


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


def run_engine(
    name: str, storage: StorageConfig, store: Store, args: argparse.Namespace
) -> dict[str, Any]:
    if store.is_empty():
        print(f"{name}: building the store ...", file=sys.stderr, flush=True)
        built = fill(store, args.copies)
    else:  # a kept SQLite file
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
    proc, url = start_server(storage)
    try:
        result: dict[str, Any] = {"store": built}
        for endpoint, paths in endpoints.items():
            for shape in ("paced", "closed"):
                figures = load(url, paths, args.clients, args.seconds, paced=shape == "paced")
                result[f"{endpoint}_{shape}"] = figures
                print(
                    f"  {name:<7} {endpoint:<16} {shape:<6} p50 {figures['p50_ms']:7.1f} ms  "
                    f"p99 {figures['p99_ms']:7.1f} ms  {figures['rps']:6.0f} req/s  "
                    f"errors {figures['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # busy answering requests wrk gave up on
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--copies", type=int, default=493, help="sample copies (203 tasks each)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--sqlite-file", type=Path, help="keep the SQLite store here; reused when it exists"
    )
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    configure_logging("WARNING")
    results: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            if engine == "sqlite":
                storage = StorageConfig(path=args.sqlite_file or Path(tmp) / "load.db")
            else:
                prefix = f"bench-load-{uuid.uuid4().hex[:8]}"
                storage = StorageConfig(engine="redis", redis_url=REDIS_URL, key_prefix=prefix)
            store = open_store(storage)
            try:
                results[engine] = run_engine(engine, storage, store, args)
            finally:
                if engine == "redis":
                    import redis

                    client = redis.Redis.from_url(REDIS_URL)
                    pattern = "{" + storage.key_prefix + "}:*"
                    keys = list(client.scan_iter(match=pattern, count=1000))
                    for i in range(0, len(keys), 1000):
                        client.delete(*keys[i : i + 1000])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"api-load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
