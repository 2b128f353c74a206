"""Tests for on_status actions through fhir_bridge.writeback.delivery, with respx as the EHR:
If-Match writes, 412 re-apply or conflict, permanent errors, retry budget, dead letter, replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx

from fhir_bridge.config import WritebackConfig
from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxStatus, TaskStatus
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.writeback.delivery import Delivery
from fhir_bridge.writeback.provenance import WRITE_TAG_SYSTEM
from tests.utils import NOW, make_draft

BASE = "https://ehr.example.org/fhir"
SOURCE = "ehr1"
CONFIRM = {
    "update_focus": {
        "set": {
            "status": "'booked'",
            "participant.where(actor.reference.startsWith('Patient/')).status": "'accepted'",
        }
    }
}
OUTREACH = {
    "create": {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "{{ participant.actor.reference.where(startsWith('Patient/')) }}"},
        "about": [{"reference": "Appointment/{{ id }}"}],
        "payload": [{"contentString": "{{ %note }}"}],
        "sender": {"identifier": {"value": "{{ %coordinator }}"}},
    }
}
OUTPUT = {"task_output": {"type": "eligibility-verified", "value": "'verified'"}}


def appointment(version: str, status: str = "proposed", patient: str = "needs-action") -> dict:
    """Appointment a1 at `version`, with a patient and a practitioner participant."""
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": version},
        "status": status,
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": patient},
            {"actor": {"reference": "Practitioner/d1"}, "status": "needs-action"},
        ],
    }


class Env:
    """A store with one claimed task, a TaskService whose rule has `actions`, and a Delivery."""

    def __init__(self, actions: list[dict[str, Any]], max_attempts: int = 10) -> None:
        self.store = SqliteStore(":memory:")
        self.service = TaskService(
            self.store,
            lambda: NOW,
            [SOURCE],
            actions_for=lambda rule, status: actions if status is TaskStatus.COMPLETED else (),
        )
        self.task = self.store.upsert_task(make_draft(source=SOURCE), NOW).task
        self.settings = WritebackConfig(max_attempts=max_attempts)
        self.clock = NOW

    def complete(self, note: str | None = None) -> None:
        """Alice completes the task; its mirror entry is marked delivered (not under test)."""
        self.service.change_status(self.task.id, TaskStatus.COMPLETED, "alice", note=note)
        for entry in self.store.list_outbox(task_id=self.task.id):
            if entry.action == MIRROR_ACTION:
                self.store.outbox_delivered(entry.id, NOW)

    def action_entry(self):
        """The task's one action entry, as stored now."""
        (entry,) = [
            e for e in self.store.list_outbox(task_id=self.task.id) if e.action != MIRROR_ACTION
        ]
        return entry

    async def deliver(self):
        """One outbox scan against the mocked EHR (no client-level retries)."""
        async with FhirClient(BASE, source=SOURCE, retry=RetryPolicy(attempts=1)) as client:
            delivery = Delivery(self.store, {SOURCE: client}, self.settings, lambda: self.clock)
            return await delivery.deliver_due()


@pytest.fixture
def ehr() -> Iterator[respx.MockRouter]:
    """The mocked EHR; a Provenance create always succeeds."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.post("/Provenance").respond(201, json={"resourceType": "Provenance", "id": "pv1"})
        yield router


def sent(route: respx.Route, n: int = -1) -> dict:
    """The JSON body of a call to `route`."""
    return json.loads(route.calls[n].request.content)


async def test_update_focus_puts_with_if_match_and_records_provenance(ehr):
    """The focus is read, changed and PUT with If-Match on the version read; a Provenance
    names the version written, the coordinator and the bridge."""
    env = Env([CONFIRM])
    env.complete()
    ehr.get("/Appointment/a1").respond(200, json=appointment("1"))
    put = ehr.put("/Appointment/a1").respond(
        200, json=appointment("2", "booked", "accepted"), headers={"ETag": 'W/"2"'}
    )
    stats = await env.deliver()
    assert stats.delivered == 1
    assert put.calls[0].request.headers["If-Match"] == 'W/"1"'
    body = sent(put)
    assert body["status"] == "booked"
    assert [p["status"] for p in body["participant"]] == ["accepted", "needs-action"]
    provenance = sent(ehr.routes[0])
    assert provenance["target"] == [{"reference": "Appointment/a1/_history/2"}]
    assert provenance["activity"]["coding"][0]["code"] == "UPDATE"
    agents = [a["who"] for a in provenance["agent"]]
    assert agents[0] == {
        "type": "Practitioner",
        "identifier": {"system": "urn:fhir-bridge:coordinator", "value": "alice"},
    }
    assert agents[1]["type"] == "Device"
    tag = provenance["meta"]["tag"][0]
    assert ehr.routes[0].calls[0].request.headers["If-None-Exist"] == (
        f"_tag={WRITE_TAG_SYSTEM}|{tag['code']}"
    )
    assert env.action_entry().status is OutboxStatus.DELIVERED


async def test_412_reapplies_when_the_ehr_left_our_fields_alone(ehr):
    """On 412 the focus is re-read; the EHR changed another field, so ours go on the new version."""
    env = Env([CONFIRM])
    env.complete()
    moved = appointment("2")
    moved["participant"][1]["status"] = "accepted"  # the practitioner accepted meanwhile
    ehr.get("/Appointment/a1").mock(
        side_effect=[httpx.Response(200, json=appointment("1")), httpx.Response(200, json=moved)]
    )
    put = ehr.put("/Appointment/a1").mock(
        side_effect=[httpx.Response(412), httpx.Response(200, json=appointment("3", "booked"))]
    )
    assert (await env.deliver()).delivered == 1
    assert [c.request.headers["If-Match"] for c in put.calls] == ['W/"1"', 'W/"2"']
    assert [p["status"] for p in sent(put)["participant"]] == ["accepted", "accepted"]


async def test_412_when_the_ehr_moved_on_is_a_conflict_with_a_diff(ehr):
    """On 412 the EHR has cancelled the appointment: nothing is written, the entry is a
    conflict whose detail lists the field, ours and theirs."""
    env = Env([CONFIRM])
    env.complete()
    ehr.get("/Appointment/a1").mock(
        side_effect=[
            httpx.Response(200, json=appointment("1")),
            httpx.Response(200, json=appointment("2", "cancelled")),
        ]
    )
    put = ehr.put("/Appointment/a1").respond(412)
    stats = await env.deliver()
    assert (stats.conflicts, stats.delivered, put.call_count) == (1, 0, 1)
    entry = env.action_entry()
    assert entry.status is OutboxStatus.CONFLICT
    assert entry.detail == {
        "resource": "Appointment/a1",
        "read_version": "1",
        "current_version": "2",
        "fields": [{"path": "status", "ours": "booked", "theirs": "cancelled", "was": "proposed"}],
    }
    assert "not written" in entry.last_error
    assert not ehr.routes[0].called  # no Provenance for a write that did not happen


async def test_already_applied_writes_nothing(ehr):
    """When the EHR already holds our values, there is no PUT and no Provenance."""
    env = Env([CONFIRM])
    env.complete()
    ehr.get("/Appointment/a1").respond(200, json=appointment("4", "booked", "accepted"))
    put = ehr.put("/Appointment/a1").respond(200)
    assert (await env.deliver()).delivered == 1
    assert (put.called, ehr.routes[0].called) == (False, False)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_permanent_errors_go_to_dead_letter_with_the_outcome(ehr, status):
    """A permanent error parks the entry as dead, keeping the server's OperationOutcome text."""
    env = Env([CONFIRM])
    env.complete()
    ehr.get("/Appointment/a1").respond(200, json=appointment("1"))
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "status is frozen"}],
    }
    ehr.put("/Appointment/a1").respond(status, json=outcome)
    assert (await env.deliver()).dead == 1
    entry = env.action_entry()
    assert entry.status is OutboxStatus.DEAD
    assert entry.detail["status"] == status
    assert entry.detail["outcome"]["issue"][0]["diagnostics"] == "status is frozen"


async def test_retry_budget_then_dead_letter_then_replay(ehr):
    """503s back off until the budget is spent (dead); a requeue replays it successfully."""
    env = Env([CONFIRM], max_attempts=2)
    env.complete()
    read = ehr.get("/Appointment/a1").respond(503)
    first = await env.deliver()
    entry = env.action_entry()
    assert (first.retried, entry.status, entry.attempts) == (1, OutboxStatus.PENDING, 1)
    assert entry.next_attempt_at == NOW + timedelta(seconds=2)
    env.clock = NOW + timedelta(seconds=2)
    assert (await env.deliver()).dead == 1
    entry = env.action_entry()
    assert entry.status is OutboxStatus.DEAD
    assert entry.last_error.startswith("retry budget spent")
    assert entry.detail["status"] == 503

    read.respond(200, json=appointment("1"))
    ehr.put("/Appointment/a1").respond(200, json=appointment("2", "booked"))
    assert env.store.outbox_requeue(entry.id, env.clock)
    assert (await env.deliver()).delivered == 1
    assert env.action_entry().status is OutboxStatus.DELIVERED


async def test_create_communication_once_with_note_and_coordinator(ehr):
    """The template is rendered on the focus with %note and %coordinator, created with an
    identifier derived from the entry (If-None-Exist), and gets a CREATE Provenance."""
    env = Env([OUTREACH])
    env.complete(note="Left a voicemail")
    ehr.get("/Appointment/a1").respond(200, json=appointment("1", "noshow"))
    create = ehr.post("/Communication").respond(
        201, json={"resourceType": "Communication", "id": "c9", "meta": {"versionId": "1"}}
    )
    assert (await env.deliver()).delivered == 1
    body = sent(create)
    entry = env.action_entry()
    key = f"{env.task.id}-{entry.id}"
    assert body["subject"] == {"reference": "Patient/p1"}
    assert body["about"] == [{"reference": "Appointment/a1"}]
    assert body["payload"] == [{"contentString": "Left a voicemail"}]
    assert body["sender"] == {"identifier": {"value": "alice"}}
    assert body["identifier"] == [{"system": "urn:fhir-bridge:task", "value": key}]
    assert (
        create.calls[0].request.headers["If-None-Exist"] == f"identifier=urn:fhir-bridge:task|{key}"
    )
    provenance = sent(ehr.routes[0])
    assert provenance["target"] == [{"reference": "Communication/c9/_history/1"}]
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"


async def test_task_output_is_added_to_the_mirror_with_if_match(ehr):
    """The output goes onto the mirror Task by If-Match PUT, and the mirror version is kept."""
    env = Env([OUTPUT])
    env.store.set_task_mirror(env.task.id, "m1", "3")
    env.complete()
    ehr.get("/Appointment/a1").respond(200, json=appointment("1"))
    mirror = {"resourceType": "Task", "id": "m1", "meta": {"versionId": "3"}, "status": "completed"}
    ehr.get("/Task/m1").respond(200, json=mirror)
    put = ehr.put("/Task/m1").respond(200, json=mirror | {"meta": {"versionId": "4"}})
    assert (await env.deliver()).delivered == 1
    assert put.calls[0].request.headers["If-Match"] == 'W/"3"'
    assert sent(put)["output"] == [
        {
            "type": {
                "coding": [
                    {"system": "urn:fhir-bridge:task-output", "code": "eligibility-verified"}
                ],
                "text": "eligibility-verified",
            },
            "valueString": "verified",
        }
    ]
    assert env.store.get_task(env.task.id).mirror_version == "4"


async def test_task_output_without_mirror_is_dead(ehr):
    """Without a mirror Task there is nowhere to put the output: the entry is dead, with why."""
    env = Env([OUTPUT])
    env.complete()
    assert (await env.deliver()).dead == 1
    assert "no FHIR Task mirror" in env.action_entry().last_error


def test_only_coordinator_changes_queue_actions():
    """A coordinator's completion queues mirror, then actions; an auto-close only the mirror."""
    env = Env([CONFIRM, OUTREACH])
    env.service.change_status(env.task.id, TaskStatus.COMPLETED, "alice", note="called")
    entries = env.store.list_outbox(task_id=env.task.id)
    assert [e.action for e in entries] == [MIRROR_ACTION, "update-focus", "create"]
    assert entries[1].payload["spec"] == CONFIRM["update_focus"]
    assert (entries[2].payload["coordinator"], entries[2].payload["note"]) == ("alice", "called")
    other = env.store.upsert_task(make_draft(source=SOURCE, focus_id="a2"), NOW).task
    env.service.auto_close(other.id, TaskStatus.COMPLETED, "booked in the EHR")
    assert [e.action for e in env.store.list_outbox(task_id=other.id)] == [MIRROR_ACTION]


async def test_malformed_action_payload_is_dead_not_a_crash(ehr):
    """An action entry without its spec keys is parked dead; the scan itself goes on."""
    env = Env([{"update_focus": {}}])
    env.complete()
    ehr.get("/Appointment/a1").respond(200, json=appointment("1"))
    assert (await env.deliver()).dead == 1
    assert "malformed update-focus action" in env.action_entry().last_error
