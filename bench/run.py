"""Every benchmark in one run: a table of figures and their ratios to anchors measured in the
same run; results written as JSON to compare runs. Asserts nothing.

    make bench            # or: .venv/bin/python bench/run.py [--repeat N] [--bulk-sizes ...]

1. ingest: the bridge's ingest path (R4B parse + profiles + store + all rules + task upsert on
   SQLite) over the packaged sample NDJSON, next to two anchors on the same lines: the bare
   `fhir.resources.R4B` parse and the `orjson` parse (the floor of reading JSON at all).
2. sync: a full sync of the sample population from a real SEKMET, next to raw httpx paging of
   the same searches (same page size, same sort), which is the floor any client pays.
   sync10k: the same comparison at >= 10,000 generated resources (bench/bulk.py's rewritten
   ids) on a fresh in-memory SEKMET, 500 a page, `--repeat` interleaved rounds (goal: <=
   1.3x; the ratio of medians, and the median of each round's own ratio), with a second
   anchor: the same searches paged by fhirpy (a popular Python FHIR client).
3. bulk: file ingest (bench/bulk.py) of generated populations in child processes: resources/s
   against the in-process ingest rate of (1), and peak RSS of the largest against the smallest.
4. api: GET latencies (p50, p99) over loopback HTTP against uvicorn serving a store with the
   smallest bulk population; anchor: `/healthz` (the same stack, no store work).
5. redis: bulk file ingest into Redis by one process, then by two processes at once (disjoint
   halves, same key prefix); anchors: the SQLite rate of (3) and the one-process rate.

Results go to bench/results/<timestamp>.json (figures, the table, the run's settings);
`--compare FILE` (or `--compare last`, as `make bench` does) adds a column with the change of
each figure against an earlier results file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bulk  # bench/bulk.py, next to this file
import httpx
import orjson
import redis_scale  # bench/redis_scale.py: store operations per engine, memory per task
from fhir.resources.R4B import get_fhir_model_class

from fhir_bridge import gctune
from fhir_bridge.config import DEFAULT_RESOURCE_TYPES, Settings, SourceConfig, StorageConfig
from fhir_bridge.logging import configure_logging
from fhir_bridge.mapping import RuleSet
from fhir_bridge.runtime import Bridge
from fhir_bridge.sandbox import Sekmet, sample_data_dir, seed_sample
from fhir_bridge.sandbox.seed import load_ndjson, seed
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.files import ingest_files
from fhir_bridge.sync.ingest import Ingestor, ProfilePolicy
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate import speedups
from fhir_bridge.validate.pool import ParsePool, auto_workers
from fhir_bridge.validate.profiles import ProfileSet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE_SIZE = 100
SYNC10K_PAGE_SIZE = 500
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # the sample population's reference date
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of `repeat` calls of `fn`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_lines(types: list[str]) -> dict[str, list[str]]:
    """The sample NDJSON lines of `types`, in that order (types without a sample file are left
    out)."""
    files = {t: sample_data_dir() / f"{t}.ndjson" for t in types}
    return {t: f.read_text().splitlines() for t, f in files.items() if f.is_file()}


def _api_settings(**fields: Any) -> Settings:
    """Settings for the benchmark bridges: API auth and rate limiting off where they exist."""
    if "auth" in Settings.model_fields:
        fields.setdefault("auth", {"enabled": False, "rate_limit_per_minute": 0})
    return Settings(mappings_dir=ROOT / "mappings", profiles_dir=ROOT / "profiles", **fields)


# -- 1. ingest ---------------------------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by other processes (the parse pool's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def bare_parse(lines: dict[str, list[str]]) -> None:
    """The bare R4B parse of every line (the bridge's validation speedups apply, if on)."""
    for rtype, rows in lines.items():
        model = get_fhir_model_class(rtype)
        for row in rows:
            model.model_validate(json.loads(row))


def _child(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run this script with `args` in a child process; the JSON it prints."""
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def library_parse(repeat: int) -> list[float]:
    """Seconds of `bare_parse` over the ingest lines in a child process without the bridge's
    validation speedups: fhir.resources as released (fhir_bridge/validate/speedups.py)."""
    times: list[float] = _child(
        "--library-parse", str(repeat), env=os.environ | {speedups.ENV: "0"}
    )
    return times


def _ingest_lines() -> dict[str, list[str]]:
    return load_lines(dependency_order(DEFAULT_RESOURCE_TYPES, RuleSet.load(ROOT / "mappings")))


def bench_ingest(repeat: int, workers: int) -> dict[str, Any]:
    """orjson parse and bare R4B parse vs the whole ingest path, on the same lines.

    The ingest path is what sync runs per page: R4B parse, core bindings and the five bridge
    profiles, content hash, store, every default rule, task upsert; on a fresh SQLite file
    each round, types in dependency order, as a source's first load.
    """
    rules = RuleSet.load(ROOT / "mappings")
    profile_set = ProfileSet.load(ROOT / "profiles")
    profiles = tuple(p.url for p in profile_set.profiles)
    lines = _ingest_lines()
    count = sum(len(v) for v in lines.values())

    def parse_orjson() -> None:
        for rows in lines.values():
            for row in rows:
                orjson.loads(row)

    def bare() -> None:
        bare_parse(lines)

    evaluations = sum(len(rules.for_type(t)) * len(rows) for t, rows in lines.items())

    def ingest(pool: ParsePool | None = None) -> None:
        """The ingest path, one call per type; with `pool`, the next type's page is sent to
        the workers before the current one is ingested (as sync and file ingest do)."""
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "b.db")
            ingestor = Ingestor(
                store,
                rules,
                TaskService(store, lambda: NOW, []),
                lambda: NOW,
                profile_set=profile_set,
                policies={"bench": ProfilePolicy(profiles, quarantine=True)},
                pool=pool,
            )
            pages = [(rtype, [json.loads(r) for r in rows]) for rtype, rows in lines.items()]
            ahead = ingestor.precheck("bench", pages[0][1], pages[0][0]) if pool else None
            for at, (rtype, page) in enumerate(pages):
                checks, ahead = ahead, None
                if pool is not None and at + 1 < len(pages):
                    ahead = ingestor.precheck("bench", pages[at + 1][1], pages[at + 1][0])
                ingestor.ingest("bench", page, rtype, initial=True, prechecked=checks)
            store.close()

    # The pool is started (and its start-up timed) before the rounds: a long-running bridge
    # pays it once; sync10k below counts it in every run. Each pool round gets a fresh pool,
    # started before its timing, so its workers share nothing validated in an earlier round.
    pool = ParsePool(profile_set, workers, min_resources=0) if workers else None
    pool_start = 0.0
    pids: list[int] = []
    checked = 0  # pages the pools checked, over every round
    if pool is not None:
        started = time.perf_counter()
        pids = pool.wait_ready(120)
        pool_start = time.perf_counter() - started
    variants: list[tuple[str, Callable[[], None]]] = [
        ("orjson", parse_orjson),
        ("bare", bare),
        ("ingest", ingest),
    ]
    if pool is not None:
        variants.append(("pool", lambda: ingest(pool)))
    # Rounds interleave the variants, so load from other processes of a shared machine falls
    # on all of them alike; CPU time (process_time) is kept next to wall time for the same
    # reason, and for the pool the workers' CPU time is added (/proc).
    wall: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    main_cpu: list[float] = []  # the pool variant's writer process alone
    try:
        for _, fn in variants[2:]:
            fn()  # warm: imports, caches of the first round count in none
        for _ in range(repeat):
            for name, fn in variants:
                # Each round validates as a process's first page does: no element shared
                # from an earlier round (validate/speedups.py), in the workers too.
                speedups.forget()
                if name == "pool" and pool is not None:
                    checked += pool.pages_checked
                    pool.close()
                    pool = ParsePool(profile_set, workers, min_resources=0)
                    pids = pool.wait_ready(120)
                started, started_cpu = time.perf_counter(), time.process_time()
                before = cpu_seconds(pids)
                fn()
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu + cpu_seconds(pids) - before)
                if name == "pool":
                    main_cpu.append(time.process_time() - started_cpu)
    finally:
        if pool is not None:
            pool.close()
    t_orjson, t_bare, t_ingest = (statistics.median(wall[n]) for n in ("orjson", "bare", "ingest"))
    t_library = statistics.median(library_parse(repeat))
    c_bare, c_ingest = statistics.median(cpu["bare"]), statistics.median(cpu["ingest"])
    pooled: dict[str, Any] = {"pool_workers": workers, "cpus": os.cpu_count()}
    if pool is not None:
        t_pool, c_pool = statistics.median(wall["pool"]), statistics.median(cpu["pool"])
        pooled |= {
            "pool_start_s": pool_start,
            "pool_per_s": count / t_pool,
            "pool_vs_bare": t_bare / t_pool,
            "pool_cpu_s": c_pool,
            "pool_main_cpu_s": statistics.median(main_cpu),
            "pool_vs_bare_paired": statistics.median(
                b / i for b, i in zip(wall["bare"], wall["pool"], strict=True)
            ),
            "pool_pages_checked": checked + pool.pages_checked,
        }
    return pooled | {
        "bare_cpu_s": c_bare,
        "ingest_cpu_s": c_ingest,
        "resources": count,
        "orjson_parse_per_s": count / t_orjson,
        "bare_parse_per_s": count / t_bare,
        "library_parse_per_s": count / t_library,
        "ingest_vs_library": t_library / t_ingest,  # the goal's ratio (#3): anchor as released
        "speedups": speedups.installed(),
        "ingest_per_s": count / t_ingest,
        "rule_evaluations": evaluations,
        "rule_evaluations_per_s": evaluations / t_ingest,
        "ingest_vs_bare": t_bare / t_ingest,  # rate ratio, as in earlier results files
        "ingest_vs_bare_cpu": c_bare / c_ingest,
        "ingest_vs_bare_paired": statistics.median(
            b / i for b, i in zip(wall["bare"], wall["ingest"], strict=True)
        ),
        "ingest_time_x_bare": t_ingest / t_bare,
        "ingest_time_x_orjson": t_ingest / t_orjson,
        "bare_time_x_orjson": t_bare / t_orjson,
    }


# -- 2. sync -----------------------------------------------------------------------------------
async def raw_paging(url: str, page_size: int = PAGE_SIZE) -> int:
    """Page through every type with plain httpx, as cheaply as a client can."""
    seen = 0
    async with httpx.AsyncClient(timeout=60) as client:
        for rtype in DEFAULT_RESOURCE_TYPES:
            next_url: str | None = f"{url}/{rtype}?_count={page_size}&_sort=_lastUpdated"
            while next_url:
                bundle = (await client.get(next_url)).json()
                seen += len(bundle.get("entry", []))
                next_url = next(
                    (lnk["url"] for lnk in bundle.get("link", []) if lnk["relation"] == "next"),
                    None,
                )
    return seen


async def fhirpy_paging(url: str, page_size: int = PAGE_SIZE) -> int:
    """Page through every type with fhirpy, a popular Python FHIR client (its async client
    over aiohttp: each resource becomes one of its resource objects), the same searches."""
    from fhirpy import AsyncFHIRClient  # a dev extra: only the benchmark uses it

    client = AsyncFHIRClient(url)
    seen = 0
    for rtype in DEFAULT_RESOURCE_TYPES:
        async for _ in client.resources(rtype).limit(page_size).sort("_lastUpdated"):
            seen += 1
    return seen


def fhirpy_child(url: str, page_size: int) -> None:
    """`--fhirpy-paging`: one timed fhirpy paging in this (child) process, as JSON on stdout.
    A child of its own so that fhirpy's and aiohttp's objects never sit in the bench process
    while the bridge is timed (its 10k resource objects left a full collection behind)."""
    import fhirpy  # noqa: F401  # the import is not timed

    gctune.settle()  # the collector settings every other run here has
    start, start_cpu = time.perf_counter(), time.process_time()
    seen = asyncio.run(fhirpy_paging(url, page_size))
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "cpu": time.process_time() - start_cpu,
                "seen": seen,
            }
        )
    )


def bench_sync(repeat: int) -> dict[str, Any]:
    """Full sync of the sample population vs raw paging, against one SEKMET."""
    with Sekmet() as ehr:
        url = ehr.start()
        seed_sample(url)
        received = asyncio.run(raw_paging(url))

        def sync_once() -> float:
            """Seconds for one full sync into a fresh store (start-up not counted)."""
            with tempfile.TemporaryDirectory() as tmp:
                settings = _api_settings(
                    sources=(SourceConfig(name="bench", base_url=url, page_size=PAGE_SIZE),),
                    storage=StorageConfig(path=Path(tmp) / "b.db"),
                )
                bridge = Bridge(settings, clock=lambda: NOW)
                start = time.perf_counter()
                asyncio.run(bridge.sync_once(full=True))
                elapsed = time.perf_counter() - start
                bridge.close()
                return elapsed

        t_raw = median_time(lambda: asyncio.run(raw_paging(url)), repeat)
        t_sync = statistics.median(sync_once() for _ in range(repeat))
    return {
        "resources": received,
        "raw_paging_s": t_raw,
        "bridge_sync_s": t_sync,
        "sync_vs_raw": t_sync / t_raw,
        "bridge_per_s": received / t_sync,
    }


def bench_sync10k(size: int, tmp: Path, repeat: int, workers: int) -> dict[str, Any]:
    """A first sync of `size` generated resources from an in-memory SEKMET vs raw paging.

    Same searches and page size for both; each bridge run syncs into a fresh SQLite file with
    the default (auto) strategy, so its one `/metadata` read is counted too. The bridge runs
    twice per round: in one process (`parse_workers: 0`), and with `workers` parse workers,
    whose start-up counts in the run. CPU: the bridge process plus its workers.
    """
    folder = tmp / "sync10k-ndjson"
    bulk.generate(folder, size, tag="s")
    synced = sum(
        sum(1 for _ in (folder / f"{t}.ndjson").open()) if (folder / f"{t}.ndjson").exists() else 0
        for t in DEFAULT_RESOURCE_TYPES
    )
    if synced < size:  # the sample also holds types the sync does not search
        bulk.generate(folder, -(-size * size // synced), tag="s")
    with Sekmet(in_memory=True) as ehr:
        url = ehr.start()
        started = time.perf_counter()
        seeded = seed(url, load_ndjson(sorted(folder.glob("*.ndjson"))))
        t_seed = time.perf_counter() - started
        received = asyncio.run(raw_paging(url, SYNC10K_PAGE_SIZE))

        server = [ehr.pid] if ehr.pid else []

        def sync_once(parse_workers: int) -> tuple[float, float, float, float]:
            """Wall and CPU seconds for one first sync into a fresh store (bridge start-up
            not counted; the parse pool's is), and the server's CPU seconds meanwhile."""
            with tempfile.TemporaryDirectory() as run_tmp:
                settings = _api_settings(
                    sources=(
                        SourceConfig(name="bench", base_url=url, page_size=SYNC10K_PAGE_SIZE),
                    ),
                    storage=StorageConfig(path=Path(run_tmp) / "b.db"),
                    ingest={"parse_workers": parse_workers},
                )
                bridge = Bridge(settings, clock=lambda: NOW)
                speedups.forget()  # a first sync shares no element validated before it
                gc.collect()  # no run inherits another's garbage to collect
                served = cpu_seconds(server)
                start, start_cpu = time.perf_counter(), time.process_time()
                [report] = asyncio.run(bridge.sync_once())
                elapsed = time.perf_counter() - start
                pool = bridge.ingestor.pool
                main = time.process_time() - start_cpu
                used = main + cpu_seconds(pool.pids() if pool else [])
                served = cpu_seconds(server) - served
                bridge.close()
                if report.totals.received != received:
                    raise RuntimeError(f"bridge got {report.totals.received}, raw {received}")
                return elapsed, used, main, served

        def raw_once() -> tuple[float, float, float, float]:
            gc.collect()
            served = cpu_seconds(server)
            start, start_cpu = time.perf_counter(), time.process_time()
            asyncio.run(raw_paging(url, SYNC10K_PAGE_SIZE))
            used = time.process_time() - start_cpu
            return time.perf_counter() - start, used, used, cpu_seconds(server) - served

        def fhirpy_once() -> tuple[float, float, float, float]:
            served = cpu_seconds(server)  # the child's start-up leaves the server idle
            got = _child("--fhirpy-paging", url, str(SYNC10K_PAGE_SIZE))
            if got["seen"] != received:
                raise RuntimeError(f"fhirpy got {got['seen']}, raw {received}")
            return got["seconds"], got["cpu"], got["cpu"], cpu_seconds(server) - served

        runs: dict[str, list[tuple[float, float, float, float]]] = {
            "raw": [],
            "fhirpy": [],
            "one": [],
            "pool": [],
        }
        # An install without the dev extra leaves the fhirpy row out.
        with_fhirpy = importlib.util.find_spec("fhirpy") is not None
        for _ in range(repeat):  # interleaved, as in (1)
            runs["raw"].append(raw_once())
            if with_fhirpy:
                runs["fhirpy"].append(fhirpy_once())
            runs["one"].append(sync_once(0))
            if workers:
                runs["pool"].append(sync_once(workers))
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items() if v}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items() if v}
    main_cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items() if v}
    server_cpu = {k: statistics.median(r[3] for r in v) for k, v in runs.items() if v}
    # Each round's bridge run over the same round's raw paging: this VM's speed drifts by tens
    # of percent within minutes, and a ratio of runs a few seconds apart drifts less than a
    # ratio of medians taken over the whole part.
    paired = {
        k: sorted(r[0] / raw[0] for r, raw in zip(runs[k], runs["raw"], strict=True))
        for k in ("one", "pool")
        if runs[k]
    }
    cpus = os.cpu_count() or 1
    # The least wall time the CPU work of a run allows: the busiest process alone (the
    # bridge's main process is one GIL), or all processes' CPU spread over every CPU.
    floor = {
        k: max(main_cpu[k], server_cpu[k], (cpu[k] + server_cpu[k]) / cpus)
        for k in ("one", "pool")
        if k in cpu
    }
    result = {
        "resources": received,
        "seeded": seeded,
        "seed_s": t_seed,
        "page_size": SYNC10K_PAGE_SIZE,
        "raw_paging_s": wall["raw"],
        "raw_paging_cpu_s": cpu["raw"],
        "bridge_sync_s": wall["one"],
        "bridge_sync_cpu_s": cpu["one"],
        "sync_vs_raw": wall["one"] / wall["raw"],
        "bridge_per_s": received / wall["one"],
        "pool_workers": workers,
        "cpus": os.cpu_count(),
        "server_cpu_raw_s": server_cpu["raw"],
        "server_cpu_sync_s": server_cpu["one"],
        "floor_vs_raw": floor["one"] / wall["raw"],
        "rounds": len(runs["raw"]),
        "sync_vs_raw_rounds": paired["one"],
        "sync_vs_raw_paired": statistics.median(paired["one"]),
    }
    if "fhirpy" in wall:
        result |= {
            "fhirpy_paging_s": wall["fhirpy"],
            "fhirpy_vs_raw": wall["fhirpy"] / wall["raw"],
            "sync_vs_fhirpy": wall["one"] / wall["fhirpy"],
        }
    if "pool" in wall:
        result |= {
            "pool_sync_s": wall["pool"],
            "pool_sync_cpu_s": cpu["pool"],
            "pool_sync_main_cpu_s": main_cpu["pool"],
            "pool_vs_raw": wall["pool"] / wall["raw"],
            "pool_floor_vs_raw": floor["pool"] / wall["raw"],
            "pool_per_s": received / wall["pool"],
            "pool_vs_raw_rounds": paired["pool"],
            "pool_vs_raw_paired": statistics.median(paired["pool"]),
        }
    return result


# -- 3. bulk -----------------------------------------------------------------------------------
def bench_bulk(sizes: list[int], tmp: Path, ingest_per_s: float) -> dict[str, Any]:
    """bench/bulk.py's measurement at `sizes`; folders are kept in `tmp` for the API part."""
    figures = bulk.measure(sizes, tmp)
    result: dict[str, Any] = {"sizes": figures}
    for fig in figures:
        fig["vs_in_process_ingest"] = fig["per_second"] / ingest_per_s
    if len(figures) >= 2:
        result["rss_ratio"] = figures[-1]["peak_rss_mb"] / figures[0]["peak_rss_mb"]
        result["input_ratio"] = figures[-1]["resources"] / figures[0]["resources"]
    return result


# -- 4. api ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_api(folder: Path, tmp: Path, requests: int) -> dict[str, Any]:
    """p50/p99 of GET routes over loopback HTTP (one client, keep-alive) vs /healthz."""
    import uvicorn

    from fhir_bridge.api import create_app

    bridge = Bridge(_api_settings(storage=StorageConfig(path=tmp / "api.db")), clock=lambda: NOW)
    try:
        ingest_files(bridge.ingestor, "bench", [folder])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            app = create_app(bridge)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                listing = client.get("/tasks", params={"limit": 50})
                listing.raise_for_status()
                items = listing.json()["items"]
                task_id = items[0]["id"]
                routes = {
                    "healthz": "/healthz",
                    "queues": "/queues",
                    "queue_tasks": "/queues/scheduling/tasks?status=open&limit=50",
                    "task": f"/tasks/{task_id}",
                }
                result: dict[str, Any] = {
                    "requests_per_route": requests,
                    "tasks": listing.json()["total"],
                }
                times: dict[str, list[float]] = {name: [] for name in routes}
                warm = requests // 10
                for i in range(requests + warm):  # round robin: noise hits every route alike
                    for name, path in routes.items():
                        start = time.perf_counter()
                        response = client.get(path)
                        elapsed = time.perf_counter() - start
                        if response.status_code != 200:
                            raise RuntimeError(f"GET {path}: HTTP {response.status_code}")
                        if i >= warm:
                            times[name].append(elapsed * 1000)
                for name, values in times.items():
                    result[name] = {
                        "p50_ms": _percentile(values, 0.50),
                        "p99_ms": _percentile(values, 0.99),
                    }
                anchor = result["healthz"]["p99_ms"]
                for name in routes:
                    result[name]["p99_x_healthz"] = result[name]["p99_ms"] / anchor
                return result
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        bridge.close()


# -- 5. redis ----------------------------------------------------------------------------------
def _delete_prefix(client: Any, prefix: str) -> None:
    from fhir_bridge.store.keys import Keys

    batch: list[str] = []
    for key in client.scan_iter(match=Keys(prefix).pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def _together(procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """Resources, wall seconds (first start to last end of the ingest) and rate of children."""
    results = [bulk.child_result(p) for p in procs]
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    received = sum(r["resources"] for r in results)
    return {"resources": received, "seconds": wall, "per_second": received / wall}


def bench_redis(half: int, tmp: Path, sqlite_per_s: float | None) -> dict[str, Any]:
    """One process ingesting 2 x `half` into Redis vs two processes ingesting `half` each."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return {"skipped": f"Redis not reachable at {REDIS_URL.split('@')[-1]}: {exc}"}
    halves = [tmp / "redis-a", tmp / "redis-b"]
    per_half = [bulk.generate(folder, half, tag=f"r{i}") for i, folder in enumerate(halves)]
    whole = tmp / "redis-whole"
    bulk.generate(whole, sum(per_half), tag="w")
    prefixes = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        one = _together([bulk.run_child(whole, REDIS_URL, prefixes[0])])
        two = _together([bulk.run_child(folder, REDIS_URL, prefixes[1]) for folder in halves])
    finally:
        for prefix in prefixes:
            _delete_prefix(client, prefix)
        client.close()
    result = {
        "one_process": one,
        "two_processes": two,
        "scaling": two["per_second"] / one["per_second"],
        "cpus": os.cpu_count(),
    }
    if sqlite_per_s:
        result["one_vs_sqlite"] = one["per_second"] / sqlite_per_s
    return result


# -- table and JSON ----------------------------------------------------------------------------
Row = tuple[str, str, str, float | None]  # name, figure, ratio text, comparable number


def _rounds(k: dict[str, Any], name: str) -> str:
    """'; per round ...' for a sync10k figure: the median of each round's own ratio to that
    round's raw paging, and their range (results files before it have none)."""
    rounds = k.get(f"{name}_vs_raw_rounds")
    if not rounds:
        return ""
    return (
        f"; {len(rounds)} rounds, each over its own raw run: median "
        f"{k[f'{name}_vs_raw_paired']:.2f}x, {rounds[0]:.2f}-{rounds[-1]:.2f}x"
    )


def table_rows(r: dict[str, Any]) -> list[Row]:
    """The printed rows: (name, figure, ratio to its anchor, the number compared across runs)."""
    rows: list[Row] = []
    i = r["ingest"]
    rows += [
        ("ingest: orjson parse (anchor)", f"{i['orjson_parse_per_s']:,.0f} res/s", "", None),
        (
            "ingest: bare R4B parse (anchor)",
            f"{i['bare_parse_per_s']:,.0f} res/s",
            f"{i['bare_time_x_orjson']:,.0f}x orjson time"
            + ("; with the bridge's validation speedups" if i.get("speedups") else ""),
            i["bare_parse_per_s"],
        ),
    ]
    if "library_parse_per_s" in i:
        rows.append(
            (
                "ingest: bare R4B parse, library as released",
                f"{i['library_parse_per_s']:,.0f} res/s",
                f"speedups: {i['bare_parse_per_s'] / i['library_parse_per_s']:.2f}x its rate "
                "(child process, FHIR_BRIDGE_VALIDATE_SPEEDUPS=0)",
                i["library_parse_per_s"],
            )
        )
    rows += [
        ("ingest: rule evaluations", f"{i['rule_evaluations_per_s']:,.0f} /s", "", None),
        (
            "ingest: parse+profiles+store+rules+tasks",
            f"{i['ingest_per_s']:,.0f} res/s",
            f"{i['ingest_time_x_bare']:.2f}x R4B time, "
            f"{i['ingest_time_x_orjson']:,.0f}x orjson time",
            i["ingest_per_s"],
        ),
    ]
    # The goal's anchor is fhir.resources' parse as released; the bridge's own parse (with its
    # validation speedups) is a second, stricter one: speeding up the parse lowers that ratio.
    if "library_parse_per_s" in i:
        rows.append(
            (
                "ingest: rate / bare R4B parse rate",
                f"{i['ingest_per_s'] / i['library_parse_per_s']:.2f}",
                "goal >= 0.60; anchor: fhir.resources as released; 1 process; vs the bridge's "
                f"own faster parse {i['ingest_vs_bare']:.2f} (CPU time "
                f"{i.get('ingest_vs_bare_cpu', 0):.2f}, paired rounds "
                f"{i.get('ingest_vs_bare_paired', 0):.2f})",
                i["ingest_per_s"] / i["library_parse_per_s"],
            )
        )
    else:
        rows.append(
            (
                "ingest: rate / bare R4B parse rate",
                f"{i['ingest_vs_bare']:.2f}",
                f"goal >= 0.60; 1 process; CPU time {i.get('ingest_vs_bare_cpu', 0):.2f}, "
                f"median of paired rounds {i.get('ingest_vs_bare_paired', 0):.2f}",
                i["ingest_vs_bare"],
            )
        )
    if "pool_per_s" in i:
        rows += [
            (
                f"ingest: with parse pool ({i['pool_workers']} workers, {i['cpus']} CPUs)",
                f"{i['pool_per_s']:,.0f} res/s",
                f"workers started before timing ({i['pool_start_s']:.2f} s); CPU main+workers "
                f"{i['pool_cpu_s']:.2f} s (main {i['pool_main_cpu_s']:.2f} s) vs 1 process "
                f"{i['ingest_cpu_s']:.2f} s",
                i["pool_per_s"],
            ),
            (
                "ingest: pool rate / bare R4B parse rate",
                f"{i['pool_per_s'] / i.get('library_parse_per_s', i['bare_parse_per_s']):.2f}",
                "goal >= 0.60; anchor: 1-process bare parse"
                + (" as released" if "library_parse_per_s" in i else "")
                + f"; vs the bridge's own parse {i['pool_vs_bare']:.2f} (paired rounds "
                f"{i['pool_vs_bare_paired']:.2f})",
                i["pool_per_s"] / i.get("library_parse_per_s", i["bare_parse_per_s"]),
            ),
        ]
    if "sync" in r:
        s = r["sync"]
        rows += [
            (
                "sync: raw httpx paging (anchor)",
                f"{s['raw_paging_s'] * 1000:,.0f} ms",
                f"{s['resources']} resources",
                None,
            ),
            (
                "sync: bridge full sync",
                f"{s['bridge_sync_s'] * 1000:,.0f} ms",
                f"{s['sync_vs_raw']:.2f}x raw paging time",
                s["bridge_sync_s"] * 1000,
            ),
        ]
    if "sync10k" in r:
        k = r["sync10k"]
        rows += [
            (
                "sync10k: raw httpx paging (anchor)",
                f"{k['raw_paging_s'] * 1000:,.0f} ms",
                f"{k['resources']:,} resources, {k['page_size']} a page",
                None,
            ),
        ]
        if "fhirpy_paging_s" in k:
            rows.append(
                (
                    "sync10k: fhirpy paging (second anchor)",
                    f"{k['fhirpy_paging_s'] * 1000:,.0f} ms",
                    f"{k['fhirpy_vs_raw']:.2f}x raw paging time; the bridge's first sync "
                    f"{k['sync_vs_fhirpy']:.2f}x its time",
                    k["fhirpy_paging_s"] * 1000,
                )
            )
        rows += [
            (
                "sync10k: bridge first sync",
                f"{k['bridge_sync_s'] * 1000:,.0f} ms",
                f"{k['sync_vs_raw']:.2f}x raw paging time (goal <= 1.3x){_rounds(k, 'sync')}, "
                f"1 process, {k['bridge_per_s']:,.0f} res/s"
                + (
                    f"; CPU {k['bridge_sync_cpu_s']:.1f} s vs raw {k['raw_paging_cpu_s']:.1f} s"
                    if "bridge_sync_cpu_s" in k
                    else ""
                ),
                k["bridge_sync_s"] * 1000,
            ),
        ]
        if "floor_vs_raw" in k:
            rows.append(
                (
                    "sync10k: least time the CPU work allows",
                    f"{k['floor_vs_raw']:.2f}x raw",
                    f"1 process; server CPU {k['server_cpu_sync_s']:.1f} s (raw paging: "
                    f"{k['server_cpu_raw_s']:.1f} s); max(busiest process, all CPU / "
                    f"{k['cpus']} CPUs)"
                    + (
                        f"; with the pool {k['pool_floor_vs_raw']:.2f}x"
                        if "pool_floor_vs_raw" in k
                        else ""
                    ),
                    k["floor_vs_raw"],
                )
            )
        if "pool_sync_s" in k:
            rows.append(
                (
                    f"sync10k: bridge first sync, parse pool ({k['pool_workers']} workers, "
                    f"{k['cpus']} CPUs)",
                    f"{k['pool_sync_s'] * 1000:,.0f} ms",
                    f"{k['pool_vs_raw']:.2f}x raw paging time (goal <= 1.3x)"
                    f"{_rounds(k, 'pool')}, pool start-up included, "
                    f"{k['pool_per_s']:,.0f} res/s; CPU main+workers "
                    f"{k['pool_sync_cpu_s']:.1f} s (main {k['pool_sync_main_cpu_s']:.1f} s)",
                    k["pool_sync_s"] * 1000,
                )
            )
    if "bulk" in r:
        b = r["bulk"]
        for fig in b["sizes"]:
            rows.append(
                (
                    f"bulk: file ingest, {fig['size']:,} (SQLite)",
                    f"{fig['per_second']:,} res/s",
                    f"{fig['vs_in_process_ingest']:.2f}x in-process ingest rate; "
                    f"{fig['resources']:,} res, RSS {fig['peak_rss_mb']:.0f} MB",
                    float(fig["per_second"]),
                )
            )
        if "rss_ratio" in b:
            rows.append(
                (
                    "bulk: peak RSS, largest / smallest",
                    f"{b['rss_ratio']:.2f}x",
                    f"for {b['input_ratio']:.1f}x the input (1.0 = flat)",
                    b["rss_ratio"],
                )
            )
    if "api" in r:
        a = r["api"]
        if "skipped" in a:
            rows.append(("api", "skipped", a["skipped"], None))
        else:
            for name, label in (
                ("healthz", "GET /healthz (anchor)"),
                ("queues", "GET /queues"),
                ("queue_tasks", "GET /queues/{q}/tasks?status=open"),
                ("task", "GET /tasks/{id}"),
            ):
                fig = a[name]
                ratio = "" if name == "healthz" else f"{fig['p99_x_healthz']:.1f}x /healthz p99"
                rows.append(
                    (
                        f"api: {label} p50 / p99",
                        f"{fig['p50_ms']:.1f} / {fig['p99_ms']:.1f} ms",
                        ratio,
                        fig["p99_ms"],
                    )
                )
    if "redis" in r:
        x = r["redis"]
        if "skipped" in x:
            rows.append(("redis", "skipped", x["skipped"], None))
        else:
            one, two = x["one_process"], x["two_processes"]
            vs = f"{x['one_vs_sqlite']:.2f}x SQLite bulk rate" if "one_vs_sqlite" in x else ""
            rows += [
                (
                    "redis: file ingest, 1 process",
                    f"{one['per_second']:,.0f} res/s",
                    f"{vs}; {one['resources']:,} res" if vs else f"{one['resources']:,} res",
                    one["per_second"],
                ),
                (
                    "redis: file ingest, 2 processes, same prefix",
                    f"{two['per_second']:,.0f} res/s",
                    f"{x['scaling']:.2f}x 1 process ({x['cpus']} CPUs; 2.0 = linear)",
                    two["per_second"],
                ),
            ]
    if "redis_scale" in r:
        rows += redis_scale.table_rows(r)
    return rows


def print_table(rows: list[Row], header: str, previous: dict[str, float] | None) -> None:
    """One table on stdout; with `previous`, a column of the change against that run."""
    width = max(len(r[0]) for r in rows)
    fig_width = max(len(r[1]) for r in rows)
    sys.stdout.write(header + "\n")
    for name, figure, ratio, number in rows:
        line = f"  {name:<{width}}  {figure:>{fig_width}}  {ratio}"
        if previous is not None and number is not None and previous.get(name):
            change = (number / previous[name] - 1) * 100
            line = f"{line:<{width + fig_width + 60}}  {change:+.0f}% vs earlier"
        sys.stdout.write(line.rstrip() + "\n")


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return proc.stdout.strip() or None


def _previous(compare: str | None) -> dict[str, float] | None:
    """Comparable values of an earlier run (`--compare FILE` or `last`), by row name."""
    if not compare:
        return None
    if compare == "last":
        earlier = sorted(RESULTS.glob("*.json"), reverse=True) if RESULTS.is_dir() else []
        for path in earlier:
            table = json.loads(path.read_text()).get("table")
            if table:
                sys.stdout.write(f"compared with bench/results/{path.name}\n")
                return {row["name"]: row["value"] for row in table}
        return None
    table = json.loads(Path(compare).read_text()).get("table", [])
    return {row["name"]: row["value"] for row in table}


def main() -> None:
    """Run the benchmarks, print one table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument(
        "--bulk-sizes",
        type=int,
        nargs="+",
        default=[20_000, 100_000],  # #4: >= 100,000, RSS flat with the input's size
        help="bulk input sizes",
    )
    parser.add_argument("--api-requests", type=int, default=400, help="GETs per route")
    parser.add_argument(
        "--redis-half", type=int, default=3_000, help="resources per process in the Redis part"
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["sync", "sync10k", "bulk", "api", "redis", "redis_scale"],
        help="parts to leave out",
    )
    parser.add_argument(
        "--compare",
        help="an earlier bench/results/*.json, or 'last' for the newest one with a table",
    )
    parser.add_argument(
        "--sync10k-size", type=int, default=10_000, help="resources in the sync10k part"
    )
    parser.add_argument(
        "--parse-workers",
        type=int,
        help="parse pool workers for the pool figures (default: auto, at least 1; 0: none)",
    )
    parser.add_argument("--library-parse", type=int, help=argparse.SUPPRESS)  # library_parse
    parser.add_argument("--fhirpy-paging", nargs=2, help=argparse.SUPPRESS)  # fhirpy_child
    args = parser.parse_args()
    configure_logging("ERROR")
    if args.fhirpy_paging:
        fhirpy_child(args.fhirpy_paging[0], int(args.fhirpy_paging[1]))
        return
    if args.library_parse:
        lines = _ingest_lines()
        bare_parse(lines)  # warm: model classes built
        times = []
        for _ in range(args.library_parse):
            started = time.perf_counter()
            bare_parse(lines)
            times.append(time.perf_counter() - started)
        print(json.dumps(times))
        return
    started = time.perf_counter()
    # As every long-running command does once its bridge is built (fhir_bridge/gctune.py);
    # FHIR_BRIDGE_GC_TUNING=0 measures without.
    tuned = gctune.settle()
    results: dict[str, Any] = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "repeat": args.repeat,
            "gc_tuning": tuned,
        }
    }
    # The pool figures are taken even where the bridge's `auto` starts no pool (2 CPUs).
    workers = max(1, auto_workers()) if args.parse_workers is None else args.parse_workers
    results["meta"]["parse_workers"] = workers
    results["ingest"] = bench_ingest(args.repeat, workers)
    if "sync" not in args.skip:
        results["sync"] = bench_sync(args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        sqlite_rate: float | None = None
        if "sync10k" not in args.skip:
            results["sync10k"] = bench_sync10k(args.sync10k_size, tmp, args.repeat, workers)
        if "bulk" not in args.skip:
            results["bulk"] = bench_bulk(args.bulk_sizes, tmp, results["ingest"]["ingest_per_s"])
            sqlite_rate = results["bulk"]["sizes"][-1]["per_second"]
        if "api" not in args.skip:
            folder = tmp / "api-ndjson"
            if "bulk" in results:
                folder = Path(results["bulk"]["sizes"][0]["folder"])
            else:
                bulk.generate(folder, args.bulk_sizes[0])
            results["api"] = bench_api(folder, tmp, args.api_requests)
        if "redis" not in args.skip:
            results["redis"] = bench_redis(args.redis_half, tmp, sqlite_rate)
        if "redis_scale" not in args.skip:
            results["redis_scale"] = redis_scale.bench(tmp)
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    rows = table_rows(results)
    results["table"] = [{"name": n, "figure": f, "ratio": r, "value": v} for n, f, r, v in rows]
    previous = _previous(args.compare)
    meta = results["meta"]
    print_table(
        rows,
        f"fhir_bridge benchmarks, {meta['when']} (commit {meta['commit']}, Python "
        f"{meta['python']}, {meta['machine']}); medians of {args.repeat} runs on the sample "
        f"population ({results['ingest']['resources']} resources); ratios are to anchors "
        f"measured in this run; {meta['seconds']:.0f} s",
        previous,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    sys.stdout.write(f"written bench/results/{stamp}.json\n")


if __name__ == "__main__":
    main()
