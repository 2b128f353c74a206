"""Redis restart during work: a `redis-server` of the test's own (AOF, appendfsync always) is
stopped (kill -9, or SIGTERM) and started again on the same directory and port while a
write-back worker runs and coordinators' changes are being stored.

Asserts what docs/scaling.md promises for that persistence setting: the worker reports
not-ready and retries with backoff instead of exiting, and every change Redis acknowledged
(tasks, their history, their outbox entries) is there afterwards and is delivered, once.
Every wait is bounded; the server and the worker are stopped in `finally`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
import yaml

from fhir_bridge.config import load_settings
from fhir_bridge.errors import StoreError, TaskConflict
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.tasks.model import OutboxStatus
from tests.utils import ROOT, make_draft, wait_for

pytestmark = pytest.mark.integration
SYSTEM = "urn:fhir-bridge:task"
T = TypeVar("T")

QUEUES = {"queues": {"scheduling": {"title": "Scheduling", "description": "To confirm."}}}
RULES = {
    "rules": [
        {
            "id": "confirm-appointment",
            "resource": "Appointment",
            "description": "A proposed appointment to confirm.",
            "when": "status = 'proposed'",
            "task": {
                "queue": "scheduling",
                "kind": "confirm-appointment",
                "title": "Confirm the appointment",
                "priority": "routine",
                "patient": "participant.actor.reference.first()",
            },
        }
    ]
}


class OwnRedis:
    """A redis-server on a free local port, its data (AOF, fsync on every write) in `folder`."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: the restart test starts its own", False)
        self.binary = binary
        self.folder = folder
        folder.mkdir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"redis-server on port {self.port} did not answer in 20 s", False)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server with `sig` and wait for it to be gone."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path) -> Iterator[OwnRedis]:
    """A started OwnRedis; killed after the test."""
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None:
        server.kill()


def settings_file(folder: Path, url: str, redis_url: str) -> Path:
    """Settings for a write-back worker to `url` on `redis_url`, with a one-rule mapping."""
    mappings = folder / "mappings"
    mappings.mkdir()
    (mappings / "queues.yaml").write_text(yaml.safe_dump(QUEUES))
    (mappings / "scheduling.yaml").write_text(yaml.safe_dump(RULES))
    settings = {
        "sources": [
            {
                "name": "sekmet",
                "base_url": url,
                "resource_types": ["Appointment"],
                "writeback": True,
            }
        ],
        "storage": {
            "engine": "redis",
            "redis_url": redis_url,
            "key_prefix": "restart",
            "outbox_visibility_timeout": 2,
        },
        "writeback": {"interval": 0.2},
        "mappings_dir": str(mappings),
        "profiles_dir": str(ROOT / "profiles"),
        "mappings_reload_interval": 0,
        "reevaluate_interval": 0,
        "log_level": "INFO",
    }
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def until_stored(call: Callable[[], T], seconds: float = 60) -> T:
    """`call` again while the store is unreachable (a coordinator retrying); its result."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def mirrors(url: str, task_id: str) -> list[dict[str, Any]]:
    """The FHIR Tasks on the server that mirror one bridge task."""
    with httpx.Client(timeout=30) as http:
        params = {"identifier": f"{SYSTEM}|{task_id}"}
        bundle = http.get(f"{url}/Task", params=params).raise_for_status().json()
    return [e["resource"] for e in bundle.get("entry", [])]


def log_events(path: Path) -> list[str]:
    """The worker's log events that tell its readiness, in order."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [
        e for line in text.splitlines() for e in ("worker_ready", "worker_not_ready") if e in line
    ]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_redis_restart_loses_nothing_acknowledged(own_redis, sekmet_url, tmp_path, sig):
    """Stop Redis mid-work (kill -9, or a clean shutdown) and start it again: the worker goes
    not-ready, keeps retrying and recovers; every acknowledged task, history event and outbox
    entry is kept and delivered once."""
    config = settings_file(tmp_path, sekmet_url, own_redis.url)
    bridge = Bridge(load_settings(config))
    store = bridge.store
    assert isinstance(store, RedisStore)
    worker_log = tmp_path / "worker.log"
    code = "from fhir_bridge.cli_worker import worker_app; worker_app()"
    args = ["worker", "-c", str(config), "--role", "writeback", "--owner", "w1"]
    with worker_log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=out)
    acknowledged: dict[str, list[int]] = {}  # task id -> its outbox entry ids

    def coordinator_claims(n: int) -> None:
        """A task for Appointment n, claimed by carol: acknowledged once both calls returned."""
        draft = make_draft(source="sekmet", focus_id=f"restart-{n}", rule_id="confirm-appointment")
        task = until_stored(lambda: store.upsert_task(draft, bridge.clock()).task)

        def claim() -> None:
            """Claim; a claim stored just before the connection dropped counts as done."""
            try:
                bridge.tasks.claim(task.id, "carol")
            except TaskConflict:
                pass

        until_stored(claim)
        entries = until_stored(lambda: store.list_outbox(task_id=task.id))
        acknowledged[task.id] = [e.id for e in entries]

    try:
        wait_for(lambda: "worker_ready" in log_events(worker_log), 60, "the worker to be ready")
        for n in range(10):
            coordinator_claims(n)
        own_redis.kill(sig)
        wait_for(
            lambda: log_events(worker_log)[-1:] == ["worker_not_ready"],
            30,
            "the worker to report not-ready",
        )
        time.sleep(1.5)  # a few back-off rounds while Redis is down
        assert worker.poll() is None, "the worker exited while Redis was down"
        own_redis.start()
        for n in range(10, 20):
            coordinator_claims(n)
        wait_for(
            lambda: log_events(worker_log)[-1:] == ["worker_ready"], 60, "the worker to recover"
        )

        def all_delivered() -> bool:
            """Every outbox entry is delivered."""
            entries = store.list_outbox(limit=-1)
            return bool(entries) and all(e.status is OutboxStatus.DELIVERED for e in entries)

        wait_for(lambda: until_stored(all_delivered), 90, "every outbox entry delivered")
        assert worker.poll() is None
        assert len(acknowledged) == 20
        for task_id, entry_ids in acknowledged.items():
            task = store.get_task(task_id)
            assert task is not None and task.assignee == "carol"
            assert [e.action for e in store.task_history(task_id)] == ["created", "claim"]
            assert entry_ids and all(store.get_outbox(i) is not None for i in entry_ids)
            assert len(mirrors(sekmet_url, task_id)) == 1, f"task {task_id}"
        waits = [
            json.loads(line)["retry_in"]
            for line in worker_log.read_text(errors="replace").splitlines()
            if "worker_not_ready" in line
        ]
        assert len(waits) >= 2 and waits == sorted(waits) and waits[-1] > waits[0], waits
    finally:
        bridge.close()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
    assert os.path.getsize(own_redis.folder / "redis.log") > 0
