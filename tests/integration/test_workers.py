"""Crash tests: `fhir-bridge worker` processes on a real SEKMET and a real Redis, one killed -9.

Every wait is bounded by a deadline and every process started here is killed in `finally`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fhir_bridge.config import Settings, SourceConfig, StorageConfig, load_settings
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.keys import OUTBOX_GROUP
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from fhir_bridge.writeback.delivery import CRASH_AFTER_CREATE_ENV
from tests.sandbox_fixtures import seeded_server
from tests.store.conftest import REDIS_URL, redis_client, redis_prefix  # noqa: F401
from tests.utils import ROOT, wait_for

pytestmark = pytest.mark.integration
TYPES = ["Patient", "CarePlan", "Appointment", "MedicationStatement", "Coverage"]
SYSTEM = "urn:fhir-bridge:task"
VISIBILITY = 2  # seconds before a killed write-back worker's claims move to another worker


@pytest.fixture
def seeded_url(sekmet_factory) -> str:
    """A fresh SEKMET holding the sample population (the test changes resources in it)."""
    return seeded_server(sekmet_factory)


def write_config(path: Path, url: str, prefix: str, **source: Any) -> Path:
    """A settings file for workers on `url` and the Redis namespace `prefix`."""
    settings = {
        "sources": [
            {
                "name": "sekmet",
                "base_url": url,
                "resource_types": TYPES,
                "page_size": 5,
                "poll_interval": 1,
                "overlap": 5,
                **source,
            }
        ],
        "storage": {
            "engine": "redis",
            "redis_url": REDIS_URL,
            "key_prefix": prefix,
            "outbox_visibility_timeout": VISIBILITY,
        },
        "writeback": {"interval": 0.2},
        "mappings_dir": str(ROOT / "mappings"),
        "profiles_dir": str(ROOT / "profiles"),
        "mappings_reload_interval": 0,
        "reevaluate_interval": 0,
        "log_level": "INFO",
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def workers(tmp_path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `fhir-bridge worker` processes; every one still alive is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        config: Path, owner: str, role: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """One worker process, its output in tmp_path/<owner>.log (`env` added to ours)."""
        code = "from fhir_bridge.cli_worker import worker_app; worker_app()"
        args = ["worker", "-c", str(config), "--role", role, "--owner", owner, "--lease-ttl", "2"]
        with (tmp_path / f"{owner}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-c", code, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | (env or {}),
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def server_versions(url: str) -> dict[tuple[str, str], str]:
    """(type, id) -> versionId of every resource of TYPES on the server."""
    found: dict[tuple[str, str], str] = {}
    with httpx.Client(timeout=30) as http:
        for rtype in TYPES:
            next_url: str | None = f"{url}/{rtype}?_count=500"
            for _ in range(100):
                if next_url is None:
                    break
                bundle = http.get(next_url).raise_for_status().json()
                for e in bundle.get("entry", []):
                    r = e["resource"]
                    found[(rtype, r["id"])] = str(r["meta"]["versionId"])
                links = {link["relation"]: link["url"] for link in bundle.get("link", [])}
                next_url = links.get("next")
    return found


def store_versions(store: RedisStore) -> dict[tuple[str, str], str]:
    """(type, id) -> versionId of every stored resource of TYPES."""
    return {
        (r.resource_type, r.id): str(r.version_id)
        for rtype in TYPES
        for r in store.iter_resources(rtype, "sekmet")
    }


def holds_lease(client: Any, store: RedisStore, owner: str) -> bool:
    """True when `owner` holds any sync lease (read by name: a SCAN would crawl a big Redis)."""
    names = [store.keys.lease(f"sync:sekmet:{t}") for t in TYPES]
    return any((value or "").endswith(f":{owner}") for value in client.mget(names))


def touch(url: str, rtype: str, count: int) -> None:
    """Make a new version of the first `count` resources of a type (a text change)."""
    with httpx.Client(timeout=30) as http:
        bundle = http.get(f"{url}/{rtype}?_count={count}").raise_for_status().json()
        for e in bundle["entry"][:count]:
            r = e["resource"]
            r["text"] = {"status": "generated", "div": f"<div>{time.time_ns()}</div>"}
            http.put(f"{url}/{rtype}/{r['id']}", json=r).raise_for_status()


def reference_tasks(url: str, tmp_path: Path) -> set[str]:
    """Active task ids after one plain (single-process, SQLite) sync of the same server."""
    settings = Settings(
        sources=(SourceConfig(name="sekmet", base_url=url, resource_types=tuple(TYPES)),),
        storage=StorageConfig(path=tmp_path / "reference.db"),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings)
    try:
        [report] = asyncio.run(bridge.sync_once())
        assert report.ok
        return {t.id for t in bridge.store.iter_tasks() if t.is_active}
    finally:
        bridge.close()


def test_a_worker_killed_mid_sync_is_taken_over(
    seeded_url,
    redis_prefix,  # noqa: F811
    redis_client,  # noqa: F811
    workers,
    tmp_path,
):
    """Kill -9 a worker mid-sync: the other finishes, every resource ends at its latest version,
    no task is duplicated and the active tasks are those of a plain single-process sync."""
    config = write_config(tmp_path / "bridge.yaml", seeded_url, redis_prefix)
    store = RedisStore(REDIS_URL, key_prefix=redis_prefix)
    try:
        total = len(server_versions(seeded_url))
        patients = len([k for k in server_versions(seeded_url) if k[0] == "Patient"])
        a = workers(config, "worker-a", "sync")
        b = workers(config, "worker-b", "sync")  # running when a dies: it takes over
        stored = lambda: sum(store.resource_counts().values())  # noqa: E731
        # Killed the moment the Patients are stored and other types are under way: any delay
        # here (e.g. waiting for b to start) lets a fast machine finish the sync first.
        wait_for(
            lambda: (
                store.resource_counts().get("Patient") == patients
                and 0 < stored() < total
                and holds_lease(redis_client, store, "worker-a")
            ),
            60,
            "worker-a mid-sync",
        )
        unfinished = stored() < total  # b keeps syncing: look now, not after the kill
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        assert unfinished, "the sync finished before worker-a was killed"
        touch(seeded_url, "Appointment", 3)
        touch(seeded_url, "Patient", 2)
        latest = server_versions(seeded_url)
        wait_for(
            lambda: store_versions(store) == latest, 90, "every resource at its latest version"
        )
        assert b.poll() is None, "worker-b must still run"
        tasks = list(store.iter_tasks())
        identities = [(t.rule_id, t.source, t.focus_type, t.focus_id) for t in tasks]
        assert len(set(identities)) == len(identities) == len({t.id for t in tasks})
        active = {t.id for t in tasks if t.status in (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)}
        assert active == reference_tasks(seeded_url, tmp_path)
        for rtype in TYPES:
            assert store.get_cursor("sekmet", rtype) is not None
    finally:
        store.close()


def mirrors(url: str, task_id: str) -> list[dict[str, Any]]:
    """The FHIR Tasks on the server that mirror one bridge task."""
    with httpx.Client(timeout=30) as http:
        params = {"identifier": f"{SYSTEM}|{task_id}"}
        bundle = http.get(f"{url}/Task", params=params).raise_for_status().json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_a_worker_killed_mid_writeback_is_taken_over(
    seeded_url,
    redis_prefix,  # noqa: F811
    workers,
    tmp_path,
):
    """Kill -9 a write-back worker mid-delivery: the other delivers the rest, and every completed
    task has exactly one FHIR Task mirror, completed, on the server."""
    config = write_config(tmp_path / "bridge.yaml", seeded_url, redis_prefix, writeback=True)
    settings = Settings(
        sources=(
            SourceConfig(
                name="sekmet", base_url=seeded_url, resource_types=tuple(TYPES), writeback=True
            ),
        ),
        storage=StorageConfig(engine="redis", redis_url=REDIS_URL, key_prefix=redis_prefix),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings)
    try:
        [report] = asyncio.run(bridge.sync_once())
        assert report.ok
        chosen = [t.id for t in bridge.store.iter_tasks() if t.status is TaskStatus.OPEN][:40]
        assert len(chosen) == 40
        for tid in chosen:
            bridge.tasks.claim(tid, "carol")
            bridge.tasks.change_status(tid, TaskStatus.COMPLETED, "carol", note="done")
        pending = lambda: bridge.store.list_outbox(status=None, limit=-1)  # noqa: E731
        total = len(pending())
        delivered = lambda: sum(e.delivered_at is not None for e in pending())  # noqa: E731
        a = workers(config, "worker-a", "writeback")
        wait_for(lambda: 0 < delivered() < total, 60, "worker-a mid-delivery")
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        assert delivered() < total, "worker-a delivered everything before it was killed"
        b = workers(config, "worker-b", "writeback")
        wait_for(lambda: delivered() == total, 90, "every outbox entry delivered")
        assert b.poll() is None
        entries = pending()
        assert {e.status.value for e in entries} == {"delivered"}
        for tid in chosen:
            found = mirrors(seeded_url, tid)
            assert len(found) == 1, f"task {tid}: {len(found)} mirrors"
            assert found[0]["status"] == "completed"
    finally:
        bridge.close()


def test_a_writeback_worker_killed_before_acking_is_reclaimed(
    seeded_url,
    redis_prefix,  # noqa: F811
    redis_client,  # noqa: F811
    workers,
    tmp_path,
):
    """A worker killed -9 after the server created a mirror Task and before recording it or
    acknowledging its stream claims: another worker reclaims the claims after the visibility
    timeout, and every completed task has exactly one mirror Task, completed, on SEKMET."""
    config = write_config(tmp_path / "bridge.yaml", seeded_url, redis_prefix, writeback=True)
    bridge = Bridge(load_settings(config))
    store = bridge.store
    assert isinstance(store, RedisStore)
    try:
        [report] = asyncio.run(bridge.sync_once())
        assert report.ok
        chosen = [t.id for t in store.iter_tasks() if t.status is TaskStatus.OPEN][:6]
        for tid in chosen:
            bridge.tasks.claim(tid, "carol")
            bridge.tasks.change_status(tid, TaskStatus.COMPLETED, "carol", note="done")
        marker = tmp_path / "killed"
        a = workers(config, "worker-a", "writeback", {CRASH_AFTER_CREATE_ENV: str(marker)})
        assert a.wait(timeout=60) == -signal.SIGKILL
        assert marker.read_text() == "created\n"
        stream = store.keys.outbox_stream
        held = redis_client.xpending_range(stream, OUTBOX_GROUP, "-", "+", 100, "worker-a")
        assert held, "worker-a held no unacknowledged claim when it died"
        assert any(mirrors(seeded_url, tid) for tid in chosen), "no mirror was created"
        b = workers(config, "worker-b", "writeback")
        everything = lambda: store.list_outbox(limit=-1)  # noqa: E731
        wait_for(
            lambda: all(e.status is OutboxStatus.DELIVERED for e in everything()),
            90,
            "every outbox entry delivered by worker-b",
        )
        assert b.poll() is None
        assert redis_client.xpending(stream, OUTBOX_GROUP)["pending"] == 0
        for tid in chosen:
            found = mirrors(seeded_url, tid)
            assert len(found) == 1, f"task {tid}: {len(found)} mirrors"
            assert found[0]["status"] == "completed"
            assert store.get_task(tid).mirror_id == found[0]["id"]
    finally:
        bridge.close()
