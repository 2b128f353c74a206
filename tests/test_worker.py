"""Tests for fhir_bridge.worker: leased sync and write-back between workers on one real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from structlog.testing import capture_logs
from typer.testing import CliRunner

from fhir_bridge.api import create_app
from fhir_bridge.cli_worker import worker_app
from fhir_bridge.config import Settings, SourceConfig
from fhir_bridge.errors import StoreError
from fhir_bridge.fhir import FhirClient
from fhir_bridge.runtime import Bridge
from fhir_bridge.store.leases import lease_manager
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.tasks.model import OutboxStatus
from fhir_bridge.worker import LeasedDelivery, Worker, WorkerOptions, open_with_retry
from tests.store.conftest import redis_client, redis_prefix, redis_stores  # noqa: F401
from tests.utils import NOW, ROOT, make_draft, sample

pytestmark = pytest.mark.integration
BASE = "http://ehr.test/fhir"
SOURCE = SourceConfig(
    name="ehr", base_url=BASE, resource_types=("Appointment",), writeback=True, poll_interval=60
)
STAMP = (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z")


class FakeEhr:
    """An httpx handler: Appointment searches from the sample, Task creates; counts requests."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one request after `delay` seconds."""
        self.requests.append((request.method, request.url.path))
        await asyncio.sleep(self.delay)
        if request.method == "POST":
            body = {"resourceType": "Task", "id": "m1", "meta": {"versionId": "1"}}
            return httpx.Response(201, json=body)
        entries = [
            {"resource": r | {"meta": {"lastUpdated": STAMP}}, "search": {"mode": "match"}}
            for r in sample("Appointment")
        ]
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        return httpx.Response(200, json=bundle | {"total": len(entries)})


async def _no_sleep(_seconds: float) -> None:
    """Client retries wait for nothing."""


def client_of(ehr: FakeEhr) -> FhirClient:
    """An (unopened) FHIR client of the fake EHR."""
    return FhirClient(BASE, transport=httpx.MockTransport(ehr), source="ehr", sleep=_no_sleep)


@pytest.fixture
def bridges(redis_stores) -> Callable[[], Bridge]:  # noqa: F811
    """A factory of bridges (one per simulated worker process) on one Redis prefix."""
    opened: list[Bridge] = []

    def make() -> Bridge:
        """One more bridge sharing the test's Redis namespace."""
        settings = Settings(
            sources=(SOURCE,), mappings_dir=ROOT / "mappings", profiles_dir=ROOT / "profiles"
        )
        bridge = Bridge(settings, store=redis_stores(), clock=lambda: NOW)
        opened.append(bridge)
        return bridge

    return make


def worker_of(bridge: Bridge, owner: str, ttl: float = 5.0) -> Worker:
    """A worker of `bridge` with its own lease owner."""
    return Worker(bridge, lease_manager(bridge.store, owner), "all", WorkerOptions(lease_ttl=ttl))


async def test_a_leased_pair_is_synced_by_one_worker_only(bridges):
    """The first worker syncs and keeps the pair until its next poll; the second does nothing."""
    a, b = worker_of(bridges(), "a"), worker_of(bridges(), "b")
    ehr_a, ehr_b = FakeEhr(), FakeEhr()
    async with client_of(ehr_a) as ca, client_of(ehr_b) as cb:
        report = await a.sync_pair(SOURCE, "Appointment", ca)
        assert report is not None and report.error is None
        assert report.result.stored == len(sample("Appointment"))
        assert await b.sync_pair(SOURCE, "Appointment", cb) is None
    assert ehr_a.requests and not ehr_b.requests
    assert a.bridge.store.get_cursor("ehr", "Appointment") == STAMP


async def test_a_workers_sync_outcome_is_seen_by_the_api_process(bridges, redis_stores):  # noqa: F811
    """The API runs in another process than the workers: what a worker's sync did is in the
    store, so the API's GET /sources (and /readyz) report it rather than "not run yet"."""
    worker = worker_of(bridges(), "a")
    settings = Settings(
        auth={"enabled": False},
        sources=(SOURCE,),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    api_bridge = Bridge(settings, store=redis_stores(), clock=lambda: NOW)
    assert api_bridge.source_state["ehr"].last_ok is None
    async with client_of(FakeEhr()) as client:
        assert await worker.sync_pair(SOURCE, "Appointment", client) is not None
    [entry] = TestClient(create_app(api_bridge)).get("/sources").json()
    assert (entry["last_ok"], entry["runs"], entry["last_error"]) == (True, 1, None)
    assert entry["last_run"] == entry["last_success"] == NOW.isoformat()
    assert entry["types"]["Appointment"]["stored"] == len(sample("Appointment"))
    api_bridge.close()


async def test_a_lost_lease_stops_the_sync_and_keeps_the_cursor(bridges, redis_client):  # noqa: F811
    """When the lease passes to another owner mid-sync, the sync is cancelled, cursor unmoved."""
    worker = worker_of(bridges(), "a", ttl=0.3)
    store = worker.bridge.store
    assert isinstance(store, RedisStore)
    ehr = FakeEhr(delay=10)

    async def steal() -> None:
        """Another worker takes the lease over while the first waits on the EHR."""
        key = store.keys.lease("sync:ehr:Appointment")
        for _ in range(100):
            if redis_client.get(key):
                break
            await asyncio.sleep(0.01)
        redis_client.set(key, "999999:b", px=5000)

    async with client_of(ehr) as client:
        thief = asyncio.create_task(steal())
        result = await asyncio.wait_for(worker.sync_pair(SOURCE, "Appointment", client), 5)
        await thief
    assert result is None
    assert store.get_cursor("ehr", "Appointment") is None


async def test_two_workers_deliver_an_entry_once(bridges):
    """Two workers scanning the outbox at once send the due entry exactly once."""
    bridge = bridges()
    task = bridge.store.upsert_task(make_draft(source="ehr"), NOW).task
    bridge.tasks.claim(task.id, "carol")
    [entry] = bridge.store.list_outbox(task_id=task.id)
    ehr = FakeEhr(delay=0.3)
    async with client_of(ehr) as client:
        deliveries = [
            LeasedDelivery(
                store,
                {"ehr": client},
                bridge.settings.writeback,
                lambda: NOW,
                leases=lease_manager(store, owner),
                lease_ttl=5,
            )
            for store, owner in ((bridge.store, "a"), (bridges().store, "b"))
        ]
        stats = await asyncio.wait_for(asyncio.gather(*(d.deliver_due() for d in deliveries)), 10)
    assert sum(s.delivered for s in stats) == 1
    assert [m for m, _ in ehr.requests].count("POST") == 1
    done = bridge.store.get_outbox(entry.id)
    assert done is not None and done.status is OutboxStatus.DELIVERED
    assert bridge.store.get_task(task.id).mirror_id == "m1"


async def test_unreachable_redis_reports_not_ready_and_recovers(bridges, monkeypatch):
    """With Redis gone the worker logs not-ready and retries; it is ready once Redis is back."""
    worker = worker_of(bridges(), "a")
    store = worker.bridge.store
    assert isinstance(store, RedisStore)
    good = store.client
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    monkeypatch.setattr(store, "_redis", dead)
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with client_of(FakeEhr()) as client:
            loop = asyncio.create_task(worker._writeback_loop(stop, {"ehr": client}))
            await asyncio.sleep(0.3)
            assert worker.ready is False
            monkeypatch.setattr(store, "_redis", good)
            for _ in range(60):
                if worker.ready:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(loop, 5)
    dead.close()
    assert worker.ready is True
    events = [e["event"] for e in logs]
    assert "worker_not_ready" in events and "worker_ready" in events
    assert worker.health() == {"ready": True, "role": "all", "owner": "a"}


async def test_open_with_retry_backs_off_until_the_store_opens():
    """Opening retries a StoreError with backoff and returns the bridge once it opens."""
    calls: list[int] = []

    def opener() -> Any:
        """Fails twice, then opens."""
        calls.append(1)
        if len(calls) < 3:
            raise StoreError("Redis is not there")
        return "bridge"

    stop = asyncio.Event()
    result = await asyncio.wait_for(open_with_retry(opener, stop, max_backoff=0.01), 5)
    assert result == "bridge" and len(calls) == 3
    stop.set()
    assert await open_with_retry(opener, stop) is None


def test_unknown_role_is_refused(bridges):
    """A role other than sync, writeback or all is an error, in code and on the command line."""
    with pytest.raises(ValueError, match="unknown worker role"):
        Worker(bridges(), lease_manager(bridges().store), "everything")  # type: ignore[arg-type]
    result = CliRunner().invoke(worker_app, ["worker", "--role", "everything"])
    assert result.exit_code == 2 and "--role must be one of" in result.output
