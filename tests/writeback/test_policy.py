"""Tests for the per-source write policy (fhir_bridge.writeback.policy) through Delivery, with
respx as the EHR: refusals happen before any request, dry-run sends nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import respx
from pydantic import ValidationError

from fhir_bridge.config import SourceConfig, WritebackConfig, WritePolicyConfig
from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import MIRROR_ACTION, OutboxStatus, TaskStatus
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.writeback.delivery import Delivery, DeliveryStats
from tests.logcapture import json_log_lines
from tests.utils import NOW, make_draft

BASE = "https://ehr.example.org/fhir"
SOURCE = "ehr1"
NOTE = "Mrs Jones asked to be called after 5pm"


def arrive(status: str = "'arrived'") -> dict[str, Any]:
    """An update_focus action setting Appointment.status (and the patient's participant)."""
    return {
        "update_focus": {
            "set": {
                "status": status,
                "participant.where(actor.reference.startsWith('Patient/')).status": "'accepted'",
            }
        }
    }


OUTREACH = {
    "create": {
        "resourceType": "Communication",
        "status": "completed",
        "payload": [{"contentString": "{{ %note }}"}],
    }
}
STRICT = WritePolicyConfig(
    allowed_fields={"Appointment": ("status", "participant.status")},
    allowed_values={"Appointment.status": ("arrived", "cancelled")},
)


def appointment(version: str, status: str = "booked") -> dict[str, Any]:
    """Appointment a1 at `version` with a patient participant."""
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": version},
        "status": status,
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "needs-action"}],
    }


class Env:
    """A store with one task completed by alice (queuing `actions`) and a policy for SOURCE."""

    def __init__(self, actions: list[dict[str, Any]], rules: WritePolicyConfig) -> None:
        self.store = SqliteStore(":memory:")
        service = TaskService(
            self.store,
            lambda: NOW,
            [SOURCE],
            actions_for=lambda rule, status: actions if status is TaskStatus.COMPLETED else (),
        )
        self.task = self.store.upsert_task(make_draft(source=SOURCE), NOW).task
        service.change_status(self.task.id, TaskStatus.COMPLETED, "alice", note=NOTE)
        self.rules = rules

    def skip_mirror(self) -> None:
        """Mark the mirror entries delivered (not under test)."""
        for entry in self.store.list_outbox(task_id=self.task.id):
            if entry.action == MIRROR_ACTION:
                self.store.outbox_delivered(entry.id, NOW)

    def entries(self) -> list[Any]:
        """The task's outbox entries, oldest first."""
        return sorted(self.store.list_outbox(task_id=self.task.id), key=lambda e: e.id)

    async def deliver(self) -> DeliveryStats:
        """One outbox scan with the policy, no client-level retries."""
        async with FhirClient(BASE, source=SOURCE, retry=RetryPolicy(attempts=1)) as client:
            delivery = Delivery(
                self.store,
                {SOURCE: client},
                WritebackConfig(),
                lambda: NOW,
                policies={SOURCE: self.rules},
            )
            return await delivery.deliver_due()


@pytest.fixture
def ehr() -> Iterator[respx.MockRouter]:
    """The mocked EHR: no route unless a test adds one, so an unexpected request fails."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


async def test_allowed_status_is_written(ehr):
    """Appointment.status arrived (and participant.status through a where()) passes STRICT."""
    env = Env([arrive()], STRICT)
    env.skip_mirror()
    ehr.get("/Appointment/a1").respond(200, json=appointment("1"))
    put = ehr.put("/Appointment/a1").respond(200, json=appointment("2", "arrived"))
    ehr.post("/Provenance").respond(201, json={"resourceType": "Provenance", "id": "pv1"})
    stats = await env.deliver()
    assert (stats.delivered, stats.refused) == (1, 0)
    assert put.call_count == 1


async def test_value_outside_allowed_values_is_refused_before_any_request(ehr):
    """status booked is parked as dead with a reason naming the rule; the EHR sees nothing."""
    env = Env([arrive("'booked'")], STRICT)
    env.skip_mirror()
    stats = await env.deliver()
    assert (stats.dead, stats.refused) == (1, 1)
    assert ehr.calls.call_count == 0
    (entry,) = [e for e in env.entries() if e.action != MIRROR_ACTION]
    assert entry.status is OutboxStatus.DEAD
    assert entry.detail is not None
    assert entry.detail["rule"] == "allowed_values"
    assert "Appointment.status may only be set to arrived, cancelled" in entry.detail["policy"]
    assert entry.last_error == entry.detail["policy"]


async def test_field_outside_allowed_fields_is_refused(ehr):
    """A path not listed in allowed_fields (Appointment.start) is refused, naming the field."""
    action = {"update_focus": {"set": {"start": "'2026-01-01T10:00:00Z'"}}}
    env = Env([action], STRICT)
    env.skip_mirror()
    await env.deliver()
    assert ehr.calls.call_count == 0
    (entry,) = [e for e in env.entries() if e.action != MIRROR_ACTION]
    assert entry.status is OutboxStatus.DEAD
    assert entry.detail == {
        "policy": f"write policy of source {SOURCE!r} refuses update-focus: field "
        "Appointment.start is not in write_policy.allowed_fields.Appointment",
        "rule": "allowed_fields",
    }


async def test_type_outside_allowed_types_is_refused_without_content(ehr):
    """A Communication create is refused by allowed_types; the reason carries no note text."""
    env = Env([OUTREACH], WritePolicyConfig(allowed_types=("Task", "Provenance", "Appointment")))
    env.skip_mirror()
    await env.deliver()
    assert ehr.calls.call_count == 0
    (entry,) = [e for e in env.entries() if e.action != MIRROR_ACTION]
    assert entry.detail is not None and entry.detail["rule"] == "allowed_types"
    assert "resource type Communication" in entry.detail["policy"]
    assert "Jones" not in str(entry.detail) and "Jones" not in (entry.last_error or "")


async def test_value_known_only_at_write_time_is_refused_when_restricted(ehr):
    """A status read from the focus cannot be checked beforehand, so it is refused."""
    env = Env([arrive("iif(status = 'booked', 'arrived', 'cancelled')")], STRICT)
    env.skip_mirror()
    await env.deliver()
    assert ehr.calls.call_count == 0
    (entry,) = [e for e in env.entries() if e.action != MIRROR_ACTION]
    assert entry.status is OutboxStatus.DEAD
    assert "cannot be checked" in (entry.last_error or "")


async def test_malformed_action_is_dead_before_any_request(ehr):
    """An update_focus path the setter cannot parse is parked as dead, not a policy refusal."""
    env = Env([{"update_focus": {"set": {"participant..status": "'accepted'"}}}], STRICT)
    env.skip_mirror()
    stats = await env.deliver()
    assert (stats.dead, stats.refused) == (1, 0)
    assert ehr.calls.call_count == 0
    (entry,) = [e for e in env.entries() if e.action != MIRROR_ACTION]
    assert "malformed update-focus action" in (entry.last_error or "")


async def test_mirror_status_outside_policy_is_refused(ehr):
    """The Task mirror is checked too: Task.status completed is not in allowed_values."""
    env = Env([], WritePolicyConfig(allowed_values={"Task.status": ("requested", "in-progress")}))
    stats = await env.deliver()
    assert ehr.calls.call_count == 0
    assert stats.refused == 1
    (mirror,) = env.entries()
    assert mirror.status is OutboxStatus.DEAD
    assert mirror.detail is not None and "Task.status" in mirror.detail["policy"]


async def test_dry_run_sends_nothing_logs_fields_and_marks_delivered(ehr):
    """Dry-run: no request, each entry delivered, one writeback_dry_run line per entry with
    resource types and field paths but no values."""
    env = Env([arrive(), OUTREACH], WritePolicyConfig(mode="dry-run"))
    with json_log_lines() as logs:
        for _ in range(3):  # one entry of the task per scan: mirror, update, create
            await env.deliver()
    assert ehr.calls.call_count == 0
    assert [e.status for e in env.entries()] == [OutboxStatus.DELIVERED] * 3
    dry = [line for line in logs.lines if line["event"] == "writeback_dry_run"]
    assert [line["action"] for line in dry] == [MIRROR_ACTION, "update-focus", "create"]
    assert dry[1]["writes"] == [
        {"resource_type": "Appointment", "fields": ["status", "participant.status"]},
        {"resource_type": "Provenance", "fields": ["target", "recorded", "activity", "agent"]},
    ]
    assert "Jones" not in logs.text and "arrived" not in logs.text


async def test_dry_run_still_refuses_what_is_outside_policy(ehr):
    """A dry-run source reports a refusal just as a live one would."""
    rules = WritePolicyConfig(mode="dry-run", allowed_values=STRICT.allowed_values)
    env = Env([arrive("'booked'")], rules)
    env.skip_mirror()
    stats = await env.deliver()
    assert (stats.refused, stats.dry_run) == (1, 0)
    assert ehr.calls.call_count == 0


def test_default_policy_is_live_with_the_coordinator_types():
    """Without a write_policy block a source writes live, to the usual types, unrestricted."""
    source = SourceConfig(name="s", base_url=BASE)
    assert source.write_policy.mode == "live"
    assert {"Task", "Provenance", "Communication", "Appointment"} <= set(
        source.write_policy.allowed_types
    )
    assert source.write_policy.allowed_fields is None
    assert source.write_policy.allowed_values is None


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"mode": "dry"}, "'live' or 'dry-run'"),
        ({"allowed_types": ["Appointmnt"]}, "not FHIR R4 resource types: Appointmnt"),
        ({"allowed_fields": {"Appointment": ["participant.where(x)"]}}, "dotted names"),
        ({"allowed_values": {"status": ["arrived"]}}, "a resource type and an element path"),
        ({"allowed_values": {"Appointment.status": []}}, "at least one allowed value"),
        (
            {"allowed_types": ["Task"], "allowed_values": {"Appointment.status": ["arrived"]}},
            "not in allowed_types: Appointment",
        ),
    ],
)
def test_invalid_policy_is_rejected_with_a_clear_message(block, message):
    """Each wrong write_policy names what is wrong."""
    with pytest.raises(ValidationError, match="write_policy") as info:
        SourceConfig(name="s", base_url=BASE, write_policy=block)
    assert message in str(info.value)
