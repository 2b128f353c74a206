"""Incremental sync, quarantine and write-back edge cases against real SEKMET servers."""

from __future__ import annotations

import json

import httpx
import pytest

from fhir_bridge.config import Settings, SourceConfig, StorageConfig
from fhir_bridge.runtime import Bridge
from fhir_bridge.sandbox import free_port
from fhir_bridge.sync.engine import since_param
from fhir_bridge.tasks.model import Task, TaskStatus
from tests.integration.test_end_to_end import (
    SYSTEM,
    active_tasks_per_rule,
    expected_tasks_per_rule,
    make_bridge,
)
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW, ROOT, sample

pytestmark = pytest.mark.integration

BAD_BIRTH_DATE = "1970-02-30"


def _first(resource_type: str, **match: str) -> dict:
    """The first sample resource of `resource_type` whose fields equal `match`."""
    for resource in sample(resource_type):
        if all(resource.get(k) == v for k, v in match.items()):
            return resource
    raise AssertionError(f"no {resource_type} with {match}")


def _claim_first(bridge: Bridge, rule_id: str, coordinator: str) -> Task:
    """Claim the first task of `rule_id` for `coordinator`; return the task as it was before."""
    task = bridge.store.list_tasks(rule_id=rule_id, limit=1).items[0]
    bridge.tasks.claim(task.id, coordinator)
    return task


def _count(url: str, resource_type: str, last_updated: str) -> int:
    """Resources of `resource_type` on the server with `_lastUpdated=<last_updated>`."""
    count, next_url = 0, f"{url}/{resource_type}?_lastUpdated={last_updated}&_count=100"
    while next_url:
        bundle = httpx.get(next_url, timeout=30).json()
        count += len(bundle.get("entry", []))
        links = {link["relation"]: link["url"] for link in bundle.get("link", [])}
        next_url = links.get("next")
    return count


def _put(url: str, resource: dict) -> dict:
    """PUT `resource` to the server at `url` and return the stored version."""
    resp = httpx.put(f"{url}/{resource['resourceType']}/{resource['id']}", json=resource)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


async def test_invalid_resources_are_quarantined_and_the_page_proceeds(sekmet_factory, tmp_path):
    """A Patient with an impossible birth date, one with gender "bogus" and an Appointment
    without status are quarantined with their reasons; every other resource is stored and the
    task counts are unaffected."""
    url = seeded_server(sekmet_factory, extra_settings={"validation": {"inbound": "warn"}})
    patient = _first("Patient") | {"id": "broken-patient", "birthDate": BAD_BIRTH_DATE}
    appointment = {k: v for k, v in _first("Appointment").items() if k != "status"}
    appointment["id"] = "broken-appointment"
    _put(url, patient)
    _put(url, appointment)
    # SEKMET (like many servers) stores codes outside required bindings; the bridge does not.
    _put(url, _first("Patient") | {"id": "bogus-gender", "gender": "bogus"})

    bridge = make_bridge(url, tmp_path)
    try:
        [report] = await bridge.sync_once()
        assert report.ok
        assert report.totals.quarantined == 3
        entries, total = bridge.store.list_quarantine("sekmet")
        assert total == 3
        by_id = {e.resource_id: e for e in entries}
        assert by_id["broken-patient"].issues[0]["expression"] == "Patient.birthDate"
        assert by_id["bogus-gender"].issues[0]["expression"] == "Patient.gender"
        assert "administrative-gender" in by_id["bogus-gender"].issues[0]["diagnostics"]
        assert by_id["broken-appointment"].issues[0]["expression"] == "Appointment.status"
        assert by_id["broken-appointment"].issues[0]["code"] == "required"
        assert bridge.store.get_resource("sekmet", "Patient", "broken-patient") is None
        counts = bridge.store.resource_counts("sekmet")
        assert counts["Patient"] == len(sample("Patient"))
        assert active_tasks_per_rule(bridge) == expected_tasks_per_rule()

        from fhir_bridge.api import create_app

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(bridge)), base_url="http://b"
        ) as api:
            body = (await api.get("/quarantine")).json()
        assert body["total"] == 3
        assert BAD_BIRTH_DATE not in json.dumps(body), "reasons must not echo the value"
        assert {i["resource_id"] for i in body["items"]} == {
            "broken-patient",
            "broken-appointment",
            "bogus-gender",
        }
    finally:
        bridge.close()


async def test_incremental_sync_picks_up_changes_and_new_resources(sekmet_factory, tmp_path):
    """After a sync, a changed statement refreshes its task and a new no-show makes one task;
    the second run asks only for what changed since the cursor."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path, overlap=0)
    try:
        [first] = await bridge.sync_once()
        statement = _first("MedicationStatement", status="active")
        changed = json.loads(json.dumps(statement))
        changed["medicationCodeableConcept"]["coding"][0]["display"] = "Renamed Drug 5 MG"
        _put(url, changed)
        # A no-show inside the 30-day lookback window of NOW opens outreach.
        noshow = _first("Appointment", status="noshow") | {
            "id": "new-noshow",
            "start": "2026-11-20T10:00:00Z",
            "end": "2026-11-20T10:20:00Z",
        }
        _put(url, noshow)
        # `ge cursor` also re-reads the resources sharing the cursor's millisecond: how many
        # depends on how fast the server was seeded, so ask the server what the search holds.
        since = {t.resource_type: since_param(t.cursor, 0) for t in first.types if t.cursor}
        assert len(since) == len(first.types)
        expected_reads = sum(_count(url, rtype, value) for rtype, value in since.items())

        [second] = await bridge.sync_once()
        assert second.ok
        assert second.totals.received == expected_reads, "only what changed since the cursor"
        assert expected_reads < first.totals.received / 10
        assert second.totals.stored == 2
        assert second.totals.tasks_created == 1
        assert second.totals.tasks_updated == 1
        from fhir_bridge.tasks.model import task_id

        refreshed = bridge.store.get_task(
            task_id("medication-reconciliation", "sekmet", "MedicationStatement", statement["id"])
        )
        assert refreshed is not None
        assert refreshed.title == "Reconcile medication: Renamed Drug 5 MG"
        assert refreshed.focus_version == "2"
        expected = expected_tasks_per_rule()
        expected["no-show-outreach"] += 1
        assert active_tasks_per_rule(bridge) == expected
        five = bridge.settings.sources[0].resource_types
        assert first.totals.received == sum(len(sample(t)) for t in five)
    finally:
        bridge.close()


async def test_mirror_update_after_ehr_edit_keeps_their_fields(sekmet_factory, tmp_path):
    """When the EHR edits the mirror Task between our writes, we get a 412, re-read, and our
    next write keeps their note while setting our status."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        await bridge.sync_once()
        task = _claim_first(bridge, "verify-eligibility", "alice")
        assert (await bridge.deliver_once()).delivered == 1
        mirrored = bridge.store.get_task(task.id)
        assert mirrored is not None and mirrored.mirror_id and mirrored.mirror_version == "1"

        theirs = httpx.get(f"{url}/Task/{mirrored.mirror_id}").json()
        theirs["note"] = [{"text": "clinician: patient called back"}]
        _put(url, theirs)  # now at version 2; we still hold version 1

        bridge.tasks.change_status(task.id, TaskStatus.COMPLETED, "alice")
        assert (await bridge.deliver_once()).delivered == 1
        final = httpx.get(f"{url}/Task/{mirrored.mirror_id}").json()
        assert final["status"] == "completed"
        assert {"text": "clinician: patient called back"} in final["note"]
        assert final["meta"]["versionId"] == "3"
        assert bridge.store.get_task(task.id).mirror_version == "3"
    finally:
        bridge.close()


async def test_lost_bookkeeping_does_not_make_a_second_mirror(sekmet_factory, tmp_path):
    """If the mirror was created but we never recorded it (crash after the server's 201), the
    retry's conditional create finds it and updates it: still exactly one Task."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        await bridge.sync_once()
        task = _claim_first(bridge, "prior-authorization", "bob")
        await bridge.deliver_once()
        # Forget the mirror, as if the process died before recording the server's answer.
        bridge.store._write(
            "UPDATE tasks SET mirror_id=NULL, mirror_version=NULL WHERE id=?", (task.id,)
        )
        bridge.tasks.change_status(task.id, TaskStatus.CANCELLED, "bob", note="not needed")
        assert (await bridge.deliver_once()).delivered == 1
        found = httpx.get(f"{url}/Task", params={"identifier": f"{SYSTEM}|{task.id}"}).json()
        assert len(found["entry"]) == 1
        assert found["entry"][0]["resource"]["status"] == "cancelled"
        assert bridge.store.get_task(task.id).mirror_id == found["entry"][0]["resource"]["id"]
    finally:
        bridge.close()


async def test_a_failing_source_is_reported_and_the_others_sync(sekmet_factory, tmp_path):
    """A source nobody listens on is retried, then reported per type; the healthy one syncs."""
    url = seeded_server(sekmet_factory)
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(
            SourceConfig(name="good", base_url=url),
            SourceConfig(name="down", base_url=dead, retry_attempts=2, retry_max_wait=0.05),
        ),
        storage=StorageConfig(path=tmp_path / "b.db"),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    bridge = Bridge(settings, clock=lambda: NOW)
    try:
        good, down = await bridge.sync_once()
        assert good.ok and active_tasks_per_rule(bridge) == expected_tasks_per_rule()
        assert not down.ok
        assert all(t.error and "down" in t.error for t in down.types)
        assert bridge.source_state["down"].last_ok is False
        assert bridge.source_state["good"].last_ok is True
        assert bridge.store.get_cursor("down", "Patient") is None
    finally:
        bridge.close()


async def test_delivery_to_an_unreachable_source_is_retried_later(sekmet_factory, tmp_path):
    """A write-back whose server is down stays pending with the error and a later attempt time."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        await bridge.sync_once()
        task = _claim_first(bridge, "no-show-outreach", "carol")
        down = bridge.settings.sources[0].model_copy(
            update={"base_url": f"http://127.0.0.1:{free_port()}/fhir", "retry_attempts": 1}
        )
        bridge.settings = bridge.settings.model_copy(update={"sources": (down,)})
        stats = await bridge.deliver_once()
        assert (stats.delivered, stats.retried, stats.dead) == (0, 1, 0)
        [entry] = bridge.store.list_outbox(task_id=task.id)
        assert entry.status.value == "pending" and entry.attempts == 1
        assert entry.last_error is not None and "on source sekmet" in entry.last_error
        assert entry.next_attempt_at > entry.created_at
    finally:
        bridge.close()
