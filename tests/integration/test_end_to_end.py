"""End to end on a real SEKMET: sync, validate, store, rules, queues, API, write-back."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from fhir_bridge.api import create_app
from fhir_bridge.config import Settings, SourceConfig, StorageConfig, WritebackConfig
from fhir_bridge.runtime import Bridge
from fhir_bridge.tasks.model import TaskStatus
from tests.expected import expected_active_tasks
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW, ROOT, sample

pytestmark = pytest.mark.integration

SYSTEM = "urn:fhir-bridge:task"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def expected_tasks_per_rule() -> dict[str, int]:
    """Active tasks each default rule must have at NOW, computed without the rule engine."""
    return expected_active_tasks(NOW)


def active_tasks_per_rule(bridge: Bridge) -> dict[str, int]:
    """Open tasks per rule in the bridge's store."""
    return {
        rule.id: bridge.store.list_tasks(rule_id=rule.id, statuses=[TaskStatus.OPEN]).total
        for rule in bridge.rules.rules
    }


def make_bridge(
    url: str, tmp_path: Path, storage: StorageConfig | None = None, **source: object
) -> Bridge:
    """A bridge on a fresh SQLite file (or `storage`), syncing the SEKMET at `url`."""
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(SourceConfig(name="sekmet", base_url=url, page_size=50, **source),),
        storage=storage or StorageConfig(path=tmp_path / "bridge.db"),
        writeback=WritebackConfig(interval=0.1),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    return Bridge(settings, clock=lambda: NOW)


@pytest.fixture(params=["sqlite", "redis"])
def storage(request, tmp_path) -> Iterator[StorageConfig]:
    """Each engine in turn: a fresh SQLite file, or a fresh key prefix on the real Redis
    (deleted afterwards): `run` on Redis must behave like the embedded default."""
    if request.param == "sqlite":
        yield StorageConfig(path=tmp_path / "bridge.db")
        return
    config = StorageConfig(
        engine="redis", redis_url=REDIS_URL, key_prefix=f"e2e-{uuid.uuid4().hex}"
    )
    yield config
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match="{" + config.key_prefix + "}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def seeded_url(sekmet_factory) -> str:
    """A SEKMET holding the packaged sample population, shared by this module's tests."""
    return seeded_server(sekmet_factory)


async def test_sync_makes_exactly_the_expected_tasks_and_resync_adds_none(
    seeded_url, tmp_path, storage
):
    """One sync makes the independently computed number of tasks per rule; a second makes none
    (on each engine)."""
    expected = expected_tasks_per_rule()
    assert sum(n > 0 for n in expected.values()) >= 10, expected
    bridge = make_bridge(seeded_url, tmp_path, storage)
    try:
        [report] = await bridge.sync_once()
        assert report.ok, [t.error for t in report.types]
        assert active_tasks_per_rule(bridge) == expected
        assert report.totals.tasks_closed == 0, "dependency order: no task opened then closed"
        assert report.totals.tasks_created == sum(expected.values())
        counts = bridge.store.resource_counts("sekmet")
        for rtype in ("Patient", "Appointment", "MedicationStatement"):
            assert counts[rtype] == len(sample(rtype))
        assert all(t.cursor for t in report.types), "every type must have a cursor after a sync"

        [again] = await bridge.sync_once()
        assert again.ok
        assert again.totals.tasks_created == 0
        assert again.totals.stored == 0
        assert active_tasks_per_rule(bridge) == expected
    finally:
        bridge.close()


async def test_completing_a_task_in_the_api_writes_a_completed_fhir_task(
    seeded_url, tmp_path, storage
):
    """Claim + complete through the API, deliver the outbox: SEKMET holds a completed Task
    (on each engine)."""
    bridge = make_bridge(seeded_url, tmp_path, storage)
    try:
        await bridge.sync_once()
        app = create_app(bridge)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bridge"
        ) as api:
            queues = (await api.get("/queues")).json()
            scheduling = next(q for q in queues if q["queue"] == "scheduling")
            scheduling_rules = [
                r.id for r in bridge.rules.rules if r.rule.task.queue == "scheduling"
            ]
            expected = expected_tasks_per_rule()
            assert scheduling["counts"]["open"] == sum(expected[r] for r in scheduling_rules)
            listing = (
                await api.get("/queues/scheduling/tasks", params={"status": "open", "limit": 100})
            ).json()
            task = next(t for t in listing["items"] if t["kind"] == "no-show-outreach")
            claimed = await api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
            assert claimed.status_code == 200, claimed.text
            assert claimed.json()["status"] == "in-progress"
            done = await api.post(
                f"/tasks/{task['id']}/status",
                json={"coordinator": "alice", "status": "completed", "note": "left a voicemail"},
            )
            assert done.status_code == 200, done.text

            stats = await bridge.deliver_once()
            assert stats.delivered == 1  # the claim's write goes first (ordering per task)
            stats = await bridge.deliver_once()
            assert stats.delivered == 1
            # then the rule's on_status action: the outreach Communication
            assert (await bridge.deliver_once()).delivered == 1
            assert (await bridge.deliver_once()).delivered == 0

            detail = (await api.get(f"/tasks/{task['id']}")).json()
            assert [w["status"] for w in detail["writeback"]] == ["delivered"] * 3
            scrape = (await api.get("/metrics")).text
            delivered = [
                line
                for line in scrape.splitlines()
                if line.startswith("fhir_bridge_outbox_deliveries_total{")
                and 'outcome="delivered"' in line
            ]
            assert sum(float(line.rsplit(" ", 1)[1]) for line in delivered) == 3.0
            assert detail["task"]["mirror"].startswith("Task/")

        async with httpx.AsyncClient(base_url=seeded_url) as fhir:
            found = (
                await fhir.get("/Task", params={"identifier": f"{SYSTEM}|{task['id']}"})
            ).json()
            entries = found.get("entry", [])
            assert len(entries) == 1, "exactly one mirror Task, even after two writes"
            mirror = entries[0]["resource"]
            assert mirror["status"] == "completed"
            assert mirror["focus"]["reference"] == task["focus"]
            assert mirror["for"]["reference"] == task["patient"]
            assert mirror["owner"]["identifier"]["value"] == "alice"
            assert mirror["code"]["coding"][0]["code"] == "no-show-outreach"
            assert detail["task"]["mirror"] == f"Task/{mirror['id']}"
    finally:
        bridge.close()


def phi_values() -> set[str]:
    """Names, birth dates, identifier values, phones, e-mails and address lines of the sample."""
    values: set[str] = set()
    for patient in sample("Patient"):
        for name in patient.get("name", []):
            values.update(name.get("given", []))
            if name.get("family"):
                values.add(name["family"])
        values.add(patient.get("birthDate", ""))
        values.update(i["value"] for i in patient.get("identifier", []) if i.get("value"))
        values.update(t["value"] for t in patient.get("telecom", []) if t.get("value"))
        for address in patient.get("address", []):
            values.update(address.get("line", []))
    return {v for v in values if len(v) >= 4}


async def test_no_phi_in_any_log_line(seeded_url, tmp_path):
    """Sync, API reads and write-back log nothing that names, dates or identifies a patient."""
    from structlog.testing import capture_logs

    phi = phi_values()
    assert len(phi) > 100
    bridge = make_bridge(seeded_url, tmp_path)
    try:
        with capture_logs() as logs:
            await bridge.sync_once()
            app = create_app(bridge)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bridge"
            ) as api:
                task = (await api.get("/queues/insurance/tasks")).json()["items"][0]
                await api.get(f"/tasks/{task['id']}")
                await api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "dana"})
            await bridge.deliver_once()
        assert len(logs) > 10
        text = json.dumps(logs, default=str)
        leaked = sorted(v for v in phi if v in text)
        assert leaked == []
    finally:
        bridge.close()
