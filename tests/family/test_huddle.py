"""The huddle list on the sample: each reason (blocked, conflict, overdue, waiting) against an
independent computation, grouping by patient, the queue filter, and the API."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from fhir_bridge.outcomes.huddle import huddle
from fhir_bridge.runtime import Bridge
from fhir_bridge.tasks.model import OutboxStatus
from tests.utils import NOW, sample

LATER = NOW + timedelta(days=3)


def _park(bridge: Bridge, task_id: str, status: OutboxStatus) -> None:
    """Claim the task (which queues its mirror write) and park that write as dead/conflict."""
    bridge.tasks.claim(task_id, "ann")
    [entry] = bridge.store.list_outbox(task_id=task_id)
    bridge.store.outbox_park(entry.id, status, "the EHR said no", {"resource": "x"})


def test_every_reason_matches_an_independent_computation(bridge: Bridge):
    """Overdue = due before now; waiting = same patient has active insurance work and the task
    is scheduling/follow-up/family; blocked/conflict = a parked write-back."""
    active = [t for t in bridge.store.iter_tasks() if t.is_active]
    scheduling = [t for t in active if t.queue == "scheduling"]
    _park(bridge, scheduling[0].id, OutboxStatus.CONFLICT)
    _park(bridge, scheduling[1].id, OutboxStatus.DEAD)
    insurance = {(t.source, t.patient) for t in active if t.queue == "insurance"}
    expected = {
        "overdue": {t.id for t in active if t.due is not None and t.due < LATER},
        "waiting": {
            t.id
            for t in active
            if t.queue in ("scheduling", "follow-up", "family")
            and (t.source, t.patient) in insurance
        },
        "conflict": {scheduling[0].id},
        "blocked": {scheduling[1].id},
    }
    assert all(expected.values()), expected  # the sample exercises every reason

    found = huddle(bridge.store, LATER)
    got: dict[str, set[str]] = {r: set() for r in expected}
    for group in found.patients:
        assert {(t.source, group.patient) for t in group.tasks} == {(group.source, group.patient)}
        for t in group.tasks:
            for reason in t.reasons:
                got[reason].add(t.id)
    assert got == expected
    assert {r: found.counts[r] for r in expected} == {r: len(v) for r, v in expected.items()}
    assert found.counts["tasks"] == len(set().union(*expected.values()))
    [conflicted] = [t for g in found.patients for t in g.tasks if t.id == scheduling[0].id]
    assert conflicted.outbox[0]["status"] == "conflict"
    waiting = next(t for g in found.patients for t in g.tasks if "waiting" in t.reasons)
    assert {w["queue"] for w in waiting.waiting_on} == {"insurance"}


def test_queue_filter_and_api(bridge: Bridge, api: TestClient):
    """?queue= keeps that queue's tasks only; the API answers the same list as JSON."""
    only = huddle(bridge.store, NOW, queue="scheduling")
    assert only.patients and {t.queue for g in only.patients for t in g.tasks} == {"scheduling"}
    body = api.get("/huddle", params={"queue": "scheduling"}).json()
    assert body["queue"] == "scheduling"
    assert body["counts"] == only.counts
    assert [g["patient"] for g in body["patients"]] == [g.patient for g in only.patients]
    assert set(body["patients"][0]["tasks"][0]) >= {"id", "reasons", "waiting_on", "outbox", "due"}


def test_each_group_names_its_patient(api: TestClient):
    """The printed list needs names: each group carries the name its source holds."""
    names = {
        f"Patient/{p['id']}": f"{' '.join(p['name'][0].get('given', []))} {p['name'][0]['family']}"
        for p in sample("Patient")
    }
    groups = api.get("/huddle").json()["patients"]
    assert groups and all(g["name"] == names[g["patient"]] for g in groups if g["patient"])
