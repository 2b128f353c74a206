"""Tests for fhir_bridge.writeback.task_mirror: the FHIR Task that mirrors a coordinator task."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_bridge.tasks.model import Task, TaskStatus
from fhir_bridge.tasks.service import snapshot
from fhir_bridge.writeback.task_mirror import (
    COORDINATOR_SYSTEM,
    KIND_SYSTEM,
    build_task,
    identifier_query,
)
from tests.utils import NOW, make_draft

SYSTEM = "urn:fhir-bridge:task"


def snap(**changes: Any) -> dict[str, Any]:
    """The snapshot of a claimed no-show task, with `changes` applied to the task."""
    draft = make_draft(title="Reach out after a missed appointment")
    task = replace(Task.from_draft(draft, NOW), **({"assignee": "alice"} | changes))
    return snapshot(task)


def parse(resource: dict[str, Any]) -> Any:
    """The resource parsed by the R4B Task model (raises when invalid)."""
    return get_fhir_model_class("Task").model_validate(resource)


@pytest.mark.parametrize(
    ("status", "fhir_status"),
    [
        (TaskStatus.OPEN, "requested"),
        (TaskStatus.IN_PROGRESS, "in-progress"),
        (TaskStatus.COMPLETED, "completed"),
        (TaskStatus.CANCELLED, "cancelled"),
    ],
)
def test_status_maps_to_fhir_task_status(status, fhir_status):
    """Each coordinator status maps to its FHIR Task.status; businessStatus keeps ours."""
    task = build_task(snap(status=status), SYSTEM)
    assert task["status"] == fhir_status
    assert task["businessStatus"] == {"text": status.value}
    assert parse(task).status == fhir_status


def test_identifier_and_references():
    """identifier, focus, for, owner, code and dates come from the snapshot."""
    s = snap()
    task = build_task(s, SYSTEM)
    assert task["resourceType"] == "Task"
    assert task["identifier"] == [{"system": SYSTEM, "value": s["id"]}]
    assert task["focus"] == {"reference": "Appointment/a1"}
    assert task["for"] == {"reference": "Patient/p1"}
    assert task["owner"] == {
        "identifier": {"system": COORDINATOR_SYSTEM, "value": "alice"},
        "display": "alice",
    }
    assert task["code"] == {
        "coding": [{"system": KIND_SYSTEM, "code": "no-show-outreach"}],
        "text": "Reach out after a missed appointment",
    }
    assert (task["intent"], task["priority"]) == ("order", "urgent")
    assert task["authoredOn"] == NOW.isoformat()
    assert task["restriction"] == {"period": {"end": (NOW + timedelta(days=2)).isoformat()}}


def test_no_patient_no_assignee_no_due():
    """Without patient, assignee or due, there is no for, owner or restriction."""
    task = build_task(snap(patient=None, assignee=None, due=None), SYSTEM)
    assert not {"for", "owner", "restriction"} & set(task)
    parse(task)


def test_note_is_appended():
    """A note in the snapshot becomes a Task.note."""
    task = build_task(snap() | {"note": "left a voicemail"}, SYSTEM)
    assert task["note"] == [{"text": "left a voicemail"}]


def test_merge_keeps_unknown_fields_and_drops_meta():
    """Over an existing Task, fields we do not manage are kept, meta is dropped, ours replaced."""
    existing = {
        "resourceType": "Task",
        "id": "mirror-1",
        "meta": {"versionId": "4", "lastUpdated": "2026-11-25T08:00:00Z"},
        "status": "requested",
        "intent": "order",
        "groupIdentifier": {"system": "urn:ehr:group", "value": "g7"},
        "input": [{"type": {"text": "channel"}, "valueString": "phone"}],
        "owner": {"display": "someone else"},
    }
    task = build_task(snap(status=TaskStatus.COMPLETED), SYSTEM, existing=existing)
    assert "meta" not in task
    assert task["id"] == "mirror-1"
    assert task["groupIdentifier"] == existing["groupIdentifier"]
    assert task["input"] == existing["input"]
    assert task["status"] == "completed"
    assert task["owner"]["display"] == "alice"
    parse(task)


def test_unassigned_snapshot_removes_existing_owner():
    """A released task drops the owner an earlier mirror had."""
    existing = {"resourceType": "Task", "owner": {"display": "alice"}}
    assert "owner" not in build_task(snap(assignee=None), SYSTEM, existing=existing)


def test_merge_does_not_modify_existing():
    """build_task leaves the caller's existing Task untouched, including its notes."""
    existing = {
        "resourceType": "Task",
        "id": "mirror-1",
        "meta": {"versionId": "4"},
        "note": [{"text": "earlier note"}],
    }
    before = copy.deepcopy(existing)
    task = build_task(snap() | {"note": "new note"}, SYSTEM, existing=existing)
    assert task["note"] == [{"text": "earlier note"}, {"text": "new note"}]
    assert existing == before


@pytest.mark.parametrize("status", list(TaskStatus))
def test_result_parses_with_r4b(status):
    """Every built Task, with note and merge, is a valid R4B Task."""
    existing = {"resourceType": "Task", "id": "m1", "meta": {"versionId": "1"}}
    task = build_task(snap(status=status) | {"note": "n"}, SYSTEM, existing=existing)
    model = parse(task)
    assert model.identifier[0].value == snap()["id"]
    assert model.focus.reference == "Appointment/a1"


def test_identifier_query():
    """The conditional-create query names the identifier system and task id."""
    assert identifier_query(SYSTEM, "abc") == "identifier=urn:fhir-bridge:task|abc"
