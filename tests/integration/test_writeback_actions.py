"""The default on_status actions end to end against real SEKMET servers, read back over HTTP:
focus updates with If-Match, created Communications, Task outputs, Provenance, and real 412s
(the SEKMET simulator, or the EHR moving on under us)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_bridge.errors import PreconditionFailed
from fhir_bridge.fhir import FhirClient, WriteResult
from fhir_bridge.runtime import Bridge
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxStatus, Task, TaskStatus
from fhir_bridge.writeback.delivery import Delivery
from fhir_bridge.writeback.provenance import WRITE_TAG_SYSTEM
from tests.integration.test_end_to_end import make_bridge
from tests.sandbox_fixtures import seeded_server
from tests.utils import NOW, sample

pytestmark = pytest.mark.integration

SIMULATOR = {"simulator": {"enabled": True, "auto": ["Appointment"], "delay_seconds": 2}}
PATIENT_STATUS = "participant.where(actor.reference.startsWith('Patient/')).status"


def _get(url: str, path: str, **params: str) -> dict[str, Any]:
    """GET `path` from the server and return the JSON body."""
    resp = httpx.get(f"{url}/{path}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _put(url: str, resource: dict[str, Any]) -> dict[str, Any]:
    """PUT `resource` and return what the server stored."""
    resp = httpx.put(f"{url}/{resource['resourceType']}/{resource['id']}", json=resource)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def _search(url: str, resource_type: str, **params: str) -> list[dict[str, Any]]:
    """The resources of a search (first page)."""
    return [e["resource"] for e in _get(url, resource_type, **params).get("entry", [])]


class HookedClient(FhirClient):
    """A FhirClient that runs `before_update(resource, if_match)` before each PUT (once)."""

    before_update: Callable[[dict[str, Any], str | None], None] | None = None
    precondition_failures = 0

    async def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> WriteResult:
        """PUT, after the hook (which makes the server move on first)."""
        if self.before_update is not None and resource["resourceType"] == "Appointment":
            hook, self.before_update = self.before_update, None
            hook(resource, if_match)
        try:
            return await super().update(resource, if_match=if_match)
        except PreconditionFailed:
            self.precondition_failures += 1
            raise


async def _deliver_all(bridge: Bridge, client: FhirClient | None = None) -> None:
    """Scan the outbox until nothing is due (bounded: entries of one task go one per scan)."""
    for _ in range(10):
        if not bridge.store.due_outbox(NOW):
            return
        if client is None:
            await bridge.deliver_once()
        else:
            await Delivery(
                bridge.store, {"sekmet": client}, bridge.settings.writeback, bridge.clock
            ).deliver_due()
    raise AssertionError("the outbox did not drain in 10 scans")


def _complete(bridge: Bridge, task: Task, note: str) -> None:
    """Alice claims the task and completes it with a note."""
    bridge.tasks.claim(task.id, "alice")
    bridge.tasks.change_status(task.id, TaskStatus.COMPLETED, "alice", note=note)


def _action_entries(bridge: Bridge, task: Task) -> list:
    """The task's on_status entries (not the mirror)."""
    return [e for e in bridge.store.list_outbox(task_id=task.id) if e.action != MIRROR_ACTION]


def _provenance(url: str, task: Task, entry_id: int) -> list[dict[str, Any]]:
    """The Provenance resources the bridge recorded for one outbox entry."""
    return _search(url, "Provenance", _tag=f"{WRITE_TAG_SYSTEM}|{task.id}-{entry_id}")


async def test_default_actions_write_to_the_ehr(sekmet_factory, tmp_path):
    """Completing one task of each rule with on_status actions writes what the mapping says:
    the Appointment booked and accepted, an outreach Communication with the note, outputs on
    the mirror Tasks; each write has one Provenance naming alice."""
    url = seeded_server(sekmet_factory)
    bridge = make_bridge(url, tmp_path)
    try:
        [report] = await bridge.sync_once()
        assert report.ok
        rules = [
            "confirm-appointment",
            "no-show-outreach",
            "reschedule-cancelled",
            "verify-eligibility",
            "medication-reconciliation",
        ]
        tasks = {r: bridge.store.list_tasks(rule_id=r, limit=1).items[0] for r in rules}
        for task in tasks.values():
            _complete(bridge, task, note="Spoke with the patient")
        await _deliver_all(bridge)

        for task in tasks.values():
            entries = bridge.store.list_outbox(task_id=task.id)
            assert {e.status for e in entries} == {OutboxStatus.DELIVERED}, entries
            (action,) = _action_entries(bridge, task)
            (prov,) = _provenance(url, task, action.id)
            assert prov["agent"][0]["who"]["identifier"]["value"] == "alice"
            assert prov["agent"][1]["who"]["type"] == "Device"

        confirm = tasks["confirm-appointment"]
        appt = _get(url, f"Appointment/{confirm.focus_id}")
        assert appt["status"] == "booked"
        patient = [p for p in appt["participant"] if p["actor"]["reference"].startswith("Patient/")]
        assert [p["status"] for p in patient] == ["accepted"]
        (action,) = _action_entries(bridge, confirm)
        (prov,) = _provenance(url, confirm, action.id)
        assert prov["target"][0]["reference"] == (
            f"Appointment/{confirm.focus_id}/_history/{appt['meta']['versionId']}"
        )

        outreach = tasks["no-show-outreach"]
        (action,) = _action_entries(bridge, outreach)
        key = f"{outreach.id}-{action.id}"
        (comm,) = _search(url, "Communication", identifier=f"urn:fhir-bridge:task|{key}")
        assert comm["status"] == "completed"
        assert comm["about"] == [{"reference": f"Appointment/{outreach.focus_id}"}]
        assert comm["subject"] == {"reference": outreach.patient}
        assert comm["payload"] == [{"contentString": "Spoke with the patient"}]

        outputs = {
            "reschedule-cancelled": ("rebooked-appointment", "see note"),
            "verify-eligibility": ("eligibility-verified", "verified"),
            "medication-reconciliation": ("reconciled", "reconciled by coordinator"),
        }
        for rule, (code, value) in outputs.items():
            mirror_id = bridge.store.get_task(tasks[rule].id).mirror_id
            mirror = _get(url, f"Task/{mirror_id}")
            assert mirror["status"] == "completed"
            assert [
                (o["type"]["coding"][0]["code"], o["valueString"]) for o in mirror["output"]
            ] == [(code, value)]
    finally:
        bridge.close()


def _one_appointment(url: str, status: str) -> dict[str, Any]:
    """Store one sample Appointment (and its patient) as `status`, starting after NOW."""
    appt = json.loads(json.dumps(next(a for a in sample("Appointment") if a["status"] == "booked")))
    appt |= {"id": f"wb-{status}", "status": status, "start": "2026-12-10T09:00:00Z"}
    appt["end"] = "2026-12-10T09:20:00Z"
    for p in appt["participant"]:
        p["status"] = (
            "needs-action" if p["actor"]["reference"].startswith("Patient/") else "accepted"
        )
        if p["actor"]["reference"].startswith("Practitioner/"):
            p["status"] = "needs-action"
    patient_id = next(
        p["actor"]["reference"].split("/")[1]
        for p in appt["participant"]
        if p["actor"]["reference"].startswith("Patient/")
    )
    _put(url, next(p for p in sample("Patient") if p["id"] == patient_id))
    return _put(url, appt)


def _confirm_task(bridge: Bridge, appt: dict[str, Any]) -> Task:
    """The confirm-appointment task for `appt`, made directly (no sync race with the simulator)."""
    from tests.utils import make_draft

    draft = make_draft(
        rule_id="confirm-appointment",
        source="sekmet",
        focus_type="Appointment",
        focus_id=appt["id"],
        kind="confirm-appointment",
        queue="scheduling",
    )
    return bridge.store.upsert_task(draft, NOW).task


def _wait_for_new_version(url: str, path: str, seen: str | None, timeout: float = 10.0) -> None:
    """Poll until the server holds a version other than `seen` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(url, path)["meta"]["versionId"] != seen:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} stayed at version {seen}")


async def test_simulator_412_reapplies_on_the_new_version(sekmet_factory, tmp_path: Path):
    """The SEKMET simulator accepts for the practitioner between our read and our PUT: a real
    412; our fields were untouched, so the change is re-applied on the new version."""
    url = sekmet_factory(extra_settings=SIMULATOR).base_url
    bridge = make_bridge(url, tmp_path)
    try:
        appt = _one_appointment(url, "proposed")
        task = _confirm_task(bridge, appt)
        _complete(bridge, task, note="Confirmed by phone")
        async with HookedClient(url, source="sekmet") as client:
            client.before_update = lambda res, if_match: _wait_for_new_version(
                url, f"Appointment/{res['id']}", if_match
            )
            await _deliver_all(bridge, client)
            assert client.precondition_failures == 1
        (action,) = _action_entries(bridge, task)
        assert action.status is OutboxStatus.DELIVERED
        final = _get(url, f"Appointment/{appt['id']}")
        assert final["status"] == "booked"
        by_type = {p["actor"]["reference"].split("/")[0]: p["status"] for p in final["participant"]}
        assert (by_type["Patient"], by_type["Practitioner"]) == ("accepted", "accepted")
        assert len(_provenance(url, task, action.id)) == 1
    finally:
        bridge.close()


async def test_ehr_moved_on_is_a_conflict_and_nothing_is_written(sekmet_factory, tmp_path: Path):
    """A clinician cancels the appointment between our read and our PUT: the real 412 leads
    to a conflict with the diff, and the cancelled appointment stays cancelled."""
    url = sekmet_factory().base_url
    bridge = make_bridge(url, tmp_path)
    try:
        appt = _one_appointment(url, "pending")
        task = _confirm_task(bridge, appt)
        _complete(bridge, task, note="Confirmed by phone")

        def cancel(resource: dict[str, Any], if_match: str | None) -> None:
            current = _get(url, f"Appointment/{resource['id']}")
            _put(url, current | {"status": "cancelled"})

        async with HookedClient(url, source="sekmet") as client:
            client.before_update = cancel
            await _deliver_all(bridge, client)
            assert client.precondition_failures == 1
        (action,) = _action_entries(bridge, task)
        assert action.status is OutboxStatus.CONFLICT
        assert action.detail["fields"] == [
            {"path": "status", "ours": "booked", "theirs": "cancelled", "was": "pending"}
        ]
        assert action.detail["read_version"] != action.detail["current_version"]
        final = _get(url, f"Appointment/{appt['id']}")
        assert final["status"] == "cancelled"
        patient = [
            p for p in final["participant"] if p["actor"]["reference"].startswith("Patient/")
        ]
        assert patient[0]["status"] == "needs-action"
        assert _provenance(url, task, action.id) == []
    finally:
        bridge.close()
