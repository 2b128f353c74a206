"""Store operations on each engine, Redis memory per 100k tasks and 1 vs 2 ingest processes
on Redis (issue #5's figures).

    .venv/bin/python bench/redis_scale.py [--tasks N] [--memory-tasks N] [--half N] [--rounds N]
    .venv/bin/python bench/redis_scale.py --only ingest     # the 1 vs 2 processes part alone

or from bench/run.py: ``results["redis_scale"] = redis_scale.bench(tmp)`` and
``rows += redis_scale.table_rows(results)``. Asserts nothing.

Per engine, one client, the real service path (`TaskService`, so claims and status changes
run the state machine and queue their outbox entries in the same transaction):
- task upsert/s: new drafts, each its own transaction;
- claim/s: a coordinator claims each task (one outbox entry each);
- status-change/s: each task completed with a note (one more outbox entry);
- outbox claim+ack/s: `claim_outbox` in batches of 100, `outbox_delivered`, `ack_outbox`
  until nothing is left (on Redis: XREADGROUP, the claim check, XACK+XDEL).
Engines: SQLite (a file), the Redis at $REDIS_URL, and a `redis-server` started here with
AOF `appendfsync always` (the setting docs/scaling.md asks for the full guarantee), when the
binary is on PATH. Memory: `used_memory` before and after upserting `--memory-tasks` drafts
under a fresh prefix, scaled to 100k tasks.

Ingest scaling (`ingest_scaling`): bulk file ingest (bench/bulk.py's populations, the real
Ingestor) of 2 x `--half` resources by one process, then of two disjoint halves by two
processes at once under one key prefix, `--rounds` times; medians. Each child first ingests
the packaged sample under a throwaway prefix (warm-up: imports, model and FHIRPath caches),
then waits until every child is ready, so the timed parts start together. The robust figures,
which a machine shared with other work disturbs far less than the rates: Redis round trips
per resource (requests written to a connection, counted in the child), client CPU seconds
per resource (the child's own user+sys time) and redis-server CPU per resource (`INFO cpu`
delta over the timed part). They run on a `redis-server` started here without persistence
when the binary is on PATH (so its CPU and command counts are ours alone), else on $REDIS_URL.
A parse pool (`ingest.parse_workers`, where the settings have it) is off in the children: the
figure is about ingest processes sharing one Redis. bench/run.py's part 5 measures the same
rates once, without warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bulk  # bench/bulk.py, next to this file

from fhir_bridge.config import Settings, StorageConfig
from fhir_bridge.logging import configure_logging
from fhir_bridge.runtime import Bridge
from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.store.base import Store
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.files import ingest_files
from fhir_bridge.tasks.model import Priority, TaskDraft, TaskStatus
from fhir_bridge.tasks.service import TaskService

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
SOURCE = "main-ehr"
QUEUES = ["scheduling", "follow-up", "medications", "insurance", "records"]
Row = tuple[str, str, str, float | None]


def draft(i: int) -> TaskDraft:
    """The i-th of a population like the sample's: 5 queues, 12 rules, 4 priorities."""
    return TaskDraft(
        rule_id=f"rule-{i % 12}",
        source=SOURCE,
        focus_type="Appointment",
        focus_id=f"appt-{i:07d}",
        focus_version="1",
        patient=f"Patient/p{i // 4}",
        queue=QUEUES[i % 5],
        kind=f"kind-{i % 12}",
        title="Reach out after a missed routine visit",
        priority=list(Priority)[i % 4],
        due=NOW + timedelta(hours=i % 500),
    )


def _rate(count: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def store_ops(store: Store, n: int) -> dict[str, float]:
    """Operations per second on one empty store (see the module docstring)."""
    service = TaskService(store, lambda: NOW, [SOURCE])
    ids: list[str] = []

    def upsert() -> None:
        ids.extend(store.upsert_task(draft(i), NOW).task.id for i in range(n))

    def claim() -> None:
        for tid in ids:
            service.claim(tid, "carol")

    def complete() -> None:
        for tid in ids:
            service.change_status(tid, TaskStatus.COMPLETED, "carol", note="done")

    delivered = 0

    def drain() -> None:
        nonlocal delivered
        later = NOW + timedelta(days=1)
        while claims := store.claim_outbox("bench", later, 100):
            for c in claims:
                store.outbox_delivered(c.entry.id, later)
                store.ack_outbox(c)
            delivered += len(claims)

    result = {
        "upsert_per_s": _rate(n, upsert),
        "claim_per_s": _rate(n, claim),
        "status_change_per_s": _rate(n, complete),
    }
    started = time.perf_counter()
    drain()
    result["outbox_claim_ack_per_s"] = delivered / (time.perf_counter() - started)
    result["outbox_entries"] = delivered
    return result


@contextmanager
def redis_store(url: str) -> Iterator[RedisStore]:
    """A RedisStore under a fresh prefix; everything under it is deleted afterwards."""
    store = RedisStore(url, key_prefix=f"bench-{uuid.uuid4().hex[:12]}")
    try:
        yield store
    finally:
        store.wipe()
        store.client.delete(store.keys.meta)
        store.close()


@contextmanager
def aof_always_server(folder: Path) -> Iterator[str | None]:
    """A redis-server with AOF appendfsync always in `folder` (its URL), or None without one."""
    with redis_server(folder, "--appendonly", "yes", "--appendfsync", "always") as url:
        yield url


@contextmanager
def redis_server(folder: Path, *settings: str) -> Iterator[str | None]:
    """A redis-server of our own in `folder` with `settings` (its URL; no RDB snapshots), or
    None when there is no redis-server on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", *settings]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def memory(url: str, n: int) -> dict[str, Any]:
    """`used_memory` growth for `n` task upserts under a fresh prefix, scaled to 100k tasks."""
    with redis_store(url) as store:
        client = store.client
        before = int(client.info("memory")["used_memory"])
        for i in range(n):
            store.upsert_task(draft(i), NOW)
        after = int(client.info("memory")["used_memory"])
        keys = sum(1 for _ in client.scan_iter(match=store.keys.pattern, count=1000))
    grown = after - before
    return {
        "tasks": n,
        "bytes": grown,
        "keys": keys,
        "bytes_per_task": grown / n,
        "mb_per_100k": grown / n * 100_000 / 1e6,
    }


# -- ingest scaling: 1 vs 2 processes ----------------------------------------------------------
def _bridge(url: str, prefix: str) -> Bridge:
    """A bridge on `prefix`, every resource checked in its own process: the figure is about
    ingest processes sharing one Redis, so a parse pool (where the settings have one) is off
    and each child's CPU time is all its work."""
    fields: dict[str, Any] = {}
    if "ingest" in Settings.model_fields:
        fields["ingest"] = {"parse_workers": 0}
    settings = Settings(
        storage=StorageConfig(engine="redis", redis_url=url, key_prefix=prefix),
        mappings_dir=bulk.ROOT / "mappings",
        profiles_dir=bulk.ROOT / "profiles",
        **fields,
    )
    return Bridge(settings, clock=lambda: bulk.NOW)


def ingest_child(folder: Path, url: str, prefix: str) -> None:
    """Warm up, say "ready", wait for a line on stdin, ingest `folder` into `prefix`; print one
    JSON line: resources, start/end, CPU seconds, Redis round trips and conflicts."""
    import redis.connection

    configure_logging("WARNING")
    sent = [0]
    send = redis.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1  # one request (a command or a whole pipeline) written, then its replies
        send(self, command, check_health)

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    warm = _bridge(url, f"{prefix}-warm")
    try:
        ingest_files(warm.ingestor, "warmup", [sample_data_dir()])
        if isinstance(warm.store, RedisStore):
            warm.store.wipe()
            warm.store.client.delete(warm.store.keys.meta)
    finally:
        warm.close()
    bridge = _bridge(url, prefix)
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        before, trips = resource.getrusage(resource.RUSAGE_SELF), sent[0]
        started = time.time()
        report = ingest_files(bridge.ingestor, "bench", [folder])
        ended = time.time()
        after, trips = resource.getrusage(resource.RUSAGE_SELF), sent[0] - trips
        conflicts = getattr(bridge.store, "conflicts", 0)
    finally:
        bridge.close()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    r = report.result
    figures = {"resources": r.received, "tasks_created": r.tasks_created, "started": started}
    figures |= {"ended": ended, "cpu_s": cpu, "round_trips": trips, "conflicts": conflicts}
    sys.stdout.write(json.dumps(figures) + "\n")


def _server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _commands(client: Any) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def _together(url: str, jobs: list[tuple[Path, str]]) -> dict[str, Any]:
    """Children ingesting `(folder, prefix)` each, started at once after their warm-up."""
    import redis

    cmd = [sys.executable, __file__, "--ingest-child"]
    procs = [
        subprocess.Popen(
            [*cmd, str(folder), url, prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, prefix in jobs
    ]
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready":
                _, err = proc.communicate()
                raise RuntimeError(f"ingest child failed: {line}{err.strip()[-2000:]}")
        cpu, commands = _server_cpu(client), _commands(client)
        for proc in procs:
            if proc.stdin is not None:  # always (stdin=PIPE); the check is for the type
                proc.stdin.write("go\n")
                proc.stdin.flush()
        children = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"ingest child failed ({proc.returncode}): {err[-2000:]}")
            children.append(json.loads(out.strip().splitlines()[-1]))
        cpu, commands = _server_cpu(client) - cpu, _commands(client) - commands
    finally:
        client.close()
    n = sum(c["resources"] for c in children)
    wall = max(c["ended"] for c in children) - min(c["started"] for c in children)
    return {
        "resources": n,
        "seconds": wall,
        "per_second": n / wall,
        "round_trips_per_resource": sum(c["round_trips"] for c in children) / n,
        "client_cpu_ms_per_resource": sum(c["cpu_s"] for c in children) / n * 1000,
        "server_cpu_ms_per_resource": cpu / n * 1000,
        "commands_per_resource": commands / n,
        "conflicts": sum(c["conflicts"] for c in children),
    }


def ingest_scaling(tmp: Path, half: int = 3_000, rounds: int = 3) -> dict[str, Any]:
    """1 vs 2 ingest processes on Redis, `rounds` times (see the module docstring)."""
    halves = [tmp / "scale-a", tmp / "scale-b"]
    sizes = [bulk.generate(folder, half, tag=f"s{i}") for i, folder in enumerate(halves)]
    whole = tmp / "scale-whole"
    bulk.generate(whole, sum(sizes), tag="sw")
    folder = tmp / "scale-redis"
    folder.mkdir(exist_ok=True)
    with redis_server(folder, "--appendonly", "no") as own:
        url = own or REDIS_URL
        runs = []
        for _ in range(rounds):
            with redis_store(url) as one_store, redis_store(url) as two_store:
                one = _together(url, [(whole, one_store.keys.prefix)])
                two = _together(url, [(h, two_store.keys.prefix) for h in halves])
                runs.append(
                    {"one": one, "two": two, "ratio": two["per_second"] / one["per_second"]}
                )
    result: dict[str, Any] = {
        "rounds": runs,
        "server": "own redis-server, no persistence" if own else "$REDIS_URL (shared)",
        "cpus": os.cpu_count(),
    }
    for part in ("one", "two"):
        result[part] = {key: statistics.median(r[part][key] for r in runs) for key in runs[0][part]}
    result["ratio"] = statistics.median(r["ratio"] for r in runs)
    return result


def bench(
    tmp: Path,
    tasks: int = 2_000,
    memory_tasks: int = 20_000,
    half: int = 3_000,
    rounds: int = 3,
    only: str | None = None,
) -> dict[str, Any]:
    """Every figure of this module (`only="ingest"`: the ingest scaling alone); a part whose
    Redis is unreachable says so instead."""
    result: dict[str, Any] = {"tasks": tasks}
    try:
        result["ingest_scaling"] = ingest_scaling(tmp, half, rounds)
    except Exception as exc:  # a benchmark reports what it could not measure
        result["ingest_scaling"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    if only == "ingest":
        return result
    sqlite = SqliteStore(tmp / "redis-scale.db")
    try:
        result["sqlite"] = store_ops(sqlite, tasks)
    finally:
        sqlite.close()
    try:
        with redis_store(REDIS_URL) as store:
            result["redis"] = store_ops(store, tasks)
        result["memory"] = memory(REDIS_URL, memory_tasks)
    except Exception as exc:  # a benchmark reports what it could not measure
        result["redis"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    folder = tmp / "redis-aof-always"
    folder.mkdir(exist_ok=True)
    with aof_always_server(folder) as url:
        if url is not None:
            with redis_store(url) as store:
                result["redis_aof_always"] = store_ops(store, tasks)
    return result


def table_rows(results: dict[str, Any]) -> list[Row]:
    """Rows for bench/run.py's table (empty when the part did not run)."""
    r = results.get("redis_scale")
    if not r:
        return []
    rows: list[Row] = _scaling_rows(r.get("ingest_scaling"))
    if "sqlite" not in r:
        return rows
    base = r["sqlite"]
    names = {"upsert_per_s": "task upsert", "claim_per_s": "claim"}
    names |= {"status_change_per_s": "status change", "outbox_claim_ack_per_s": "outbox claim+ack"}
    for engine, label in (
        ("sqlite", "SQLite"),
        ("redis", "Redis"),
        ("redis_aof_always", "Redis AOF always"),
    ):
        figures = r.get(engine)
        if not figures:
            continue
        if "skipped" in figures:
            rows.append((f"store ops: {label}", "skipped", figures["skipped"], None))
            continue
        for key, name in names.items():
            ratio = "(anchor)" if engine == "sqlite" else f"{figures[key] / base[key]:.2f}x SQLite"
            rows.append(
                (f"store ops: {label} {name}", f"{figures[key]:,.0f} /s", ratio, figures[key])
            )
    if "memory" in r:
        m = r["memory"]
        rows.append(
            (
                "redis: memory per 100k tasks",
                f"{m['mb_per_100k']:,.1f} MB",
                f"{m['bytes_per_task']:,.0f} B/task, measured on {m['tasks']:,} tasks",
                m["mb_per_100k"],
            )
        )
    return rows


def _scaling_rows(s: dict[str, Any] | None) -> list[Row]:
    if not s:
        return []
    if "skipped" in s:
        return [("redis ingest scaling", "skipped", s["skipped"], None)]
    one, two, n = s["one"], s["two"], len(s["rounds"])
    ratios = ", ".join(f"{r['ratio']:.2f}" for r in s["rounds"])
    rows: list[Row] = [
        (
            "redis ingest: 1 process",
            f"{one['per_second']:,.0f} res/s",
            f"median of {n}; {one['resources']:,.0f} res; {s['server']}",
            one["per_second"],
        ),
        (
            "redis ingest: 2 processes, same prefix",
            f"{two['per_second']:,.0f} res/s",
            f"{s['ratio']:.2f}x 1 process (median; rounds {ratios}; goal >= 1.7x; "
            f"{s['cpus']} CPUs)",
            two["per_second"],
        ),
    ]
    for key, name, unit in (
        ("round_trips_per_resource", "Redis round trips", ""),
        ("commands_per_resource", "Redis commands", ""),
        ("client_cpu_ms_per_resource", "client CPU", " ms"),
        ("server_cpu_ms_per_resource", "redis-server CPU", " ms"),
    ):
        rows.append(
            (
                f"redis ingest: {name} per resource",
                f"{one[key]:.3f}{unit}",
                f"2 processes: {two[key]:.3f}{unit}",
                one[key],
            )
        )
    conflicts = int(two["conflicts"])
    rows.append(("redis ingest: conflicts, 2 processes", f"{conflicts}", "retried", None))
    return rows


def main() -> None:
    """Run this part alone and print its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000, help="tasks per engine")
    parser.add_argument("--memory-tasks", type=int, default=20_000, help="tasks for memory")
    parser.add_argument("--half", type=int, default=3_000, help="resources per ingest process")
    parser.add_argument("--rounds", type=int, default=3, help="1 vs 2 process rounds (median)")
    parser.add_argument("--only", choices=["ingest"], help="run only this part")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--ingest-child", nargs=3, metavar=("FOLDER", "URL", "PREFIX"))
    args = parser.parse_args()
    if args.ingest_child:
        folder, url, prefix = args.ingest_child
        ingest_child(Path(folder), url, prefix)
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = bench(Path(tmp), args.tasks, args.memory_tasks, args.half, args.rounds, args.only)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    rows = table_rows({"redis_scale": result})
    width = max(len(r[0]) for r in rows)
    fig = max(len(r[1]) for r in rows)
    sys.stdout.write(
        f"Redis ingest, 1 vs 2 processes ({args.half:,} resources each), {args.rounds} rounds; "
        f"store operations, {args.tasks:,} tasks per engine, one client\n"
    )
    for name, figure, ratio, _ in rows:
        sys.stdout.write(f"  {name:<{width}}  {figure:>{fig}}  {ratio}\n")


if __name__ == "__main__":
    main()
