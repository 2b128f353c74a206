"""Store operations on each engine and Redis memory per 100k tasks (issue #5's figures).

    .venv/bin/python bench/redis_scale.py [--tasks N] [--memory-tasks N]

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

The 1 vs 2 processes ingest on Redis is bench/run.py's part 5 (not repeated here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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

from fhir_bridge.store.base import Store
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.store.sqlite import SqliteStore
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
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
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


def bench(tmp: Path, tasks: int = 2_000, memory_tasks: int = 20_000) -> dict[str, Any]:
    """Every figure of this module; a part whose Redis is unreachable says so instead."""
    result: dict[str, Any] = {"tasks": tasks}
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
    rows: list[Row] = []
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


def main() -> None:
    """Run this part alone and print its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000, help="tasks per engine")
    parser.add_argument("--memory-tasks", type=int, default=20_000, help="tasks for memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = bench(Path(tmp), args.tasks, args.memory_tasks)
    rows = table_rows({"redis_scale": result})
    width = max(len(r[0]) for r in rows)
    fig = max(len(r[1]) for r in rows)
    sys.stdout.write(f"store operations, {args.tasks:,} tasks per engine, one client\n")
    for name, figure, ratio, _ in rows:
        sys.stdout.write(f"  {name:<{width}}  {figure:>{fig}}  {ratio}\n")


if __name__ == "__main__":
    main()
