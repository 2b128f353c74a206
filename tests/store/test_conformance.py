"""The storage protocol (fhir_bridge.store.base), run against every engine: SQLite and Redis."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from fhir_bridge.errors import TaskConflict, TaskNotFound
from fhir_bridge.store.base import (
    AuditFilter,
    AuditRecord,
    DueCounts,
    QuarantineEntry,
    TaskCursor,
)
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import (
    MIRROR_ACTION,
    OutboxDraft,
    OutboxStatus,
    Priority,
    Task,
    TaskChange,
    TaskDraft,
    TaskEvent,
    TaskStatus,
)
from tests.utils import NOW, make_draft

SOURCE = "main-ehr"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "1", "lastUpdated": "2026-11-26T10:00:00Z"},
    "birthDate": "1970-01-01",
}


def draft(focus_id: str = "a1", **changes) -> TaskDraft:
    """A routine draft without due date for one Appointment, with `changes` applied."""
    fields = {
        "source": SOURCE,
        "focus_id": focus_id,
        "title": f"Reach out {focus_id}",
        "priority": Priority.ROUTINE,
        "due": None,
    }
    return make_draft(**(fields | changes))


def quarantine(resource_id: str | None, at: datetime = NOW, **changes) -> QuarantineEntry:
    """A quarantine entry for one Appointment."""
    fields = {
        "source": SOURCE,
        "resource_type": "Appointment",
        "resource_id": resource_id,
        "version_id": "3",
        "issues": [{"severity": "error", "code": "required", "expression": "Appointment.status"}],
        "body": {"resourceType": "Appointment", "id": resource_id},
        "at": at,
    }
    return QuarantineEntry(**(fields | changes))


def mirror_change(
    status: TaskStatus, at: datetime, *payloads: dict
) -> Callable[[Task], TaskChange]:
    """A change function: set `status`, record an event at `at`, queue one entry per payload."""

    def change(task: Task) -> TaskChange:
        """Apply the status change."""
        new = replace(task, status=status, updated_at=at, version=task.version + 1)
        event = TaskEvent(task.id, at, "alice", "status", task.status.value, status.value)
        outbox = tuple(OutboxDraft(task.id, task.source, MIRROR_ACTION, p) for p in payloads)
        return TaskChange(new, event, outbox)

    return change


def claim_by(who: str) -> Callable[[Task], TaskChange]:
    """A change function that claims an open task for `who`, as TaskService.claim does."""

    def change(task: Task) -> TaskChange:
        """Refuse a task someone holds; otherwise take it and queue its mirror write."""
        if task.status is TaskStatus.IN_PROGRESS:
            raise TaskConflict(f"task {task.id} is already claimed")
        new = replace(task, status=TaskStatus.IN_PROGRESS, assignee=who, version=task.version + 1)
        event = TaskEvent(task.id, NOW, who, "claim", task.status.value, new.status.value)
        return TaskChange(new, event, (OutboxDraft(task.id, task.source, MIRROR_ACTION, {}),))

    return change


def resource(rtype: str, rid: str, patient: str | None = "p1", **extra) -> dict:
    """A minimal resource of `rtype` about `patient` (a Patient is about itself)."""
    body: dict = {"resourceType": rtype, "id": rid, **extra}
    if patient is not None and rtype != "Patient":
        body["subject"] = {"reference": f"Patient/{patient}"}
    return body


def run_together(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` in `count` threads released at the same instant; results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        """Wait for the others, then work, keeping the result or the exception."""
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- resources ------------------------------------------------------------------------------


def test_put_resource_reports_whether_it_wrote(engine_store):
    """put_resource: True when new, False for the same hash, True for a changed hash."""
    assert engine_store.put_resource(SOURCE, PATIENT, "h1") is True
    assert engine_store.put_resource(SOURCE, PATIENT, "h1") is False
    changed = {**PATIENT, "birthDate": "1970-01-02", "meta": {"versionId": "2"}}
    assert engine_store.put_resource(SOURCE, changed, "h2") is True
    stored = engine_store.get_resource(SOURCE, "Patient", "p1")
    assert (stored.content_hash, stored.version_id, stored.body) == ("h2", "2", changed)
    assert stored.last_updated is None


def test_get_resource_fields_and_counts(engine_store):
    """The stored resource keeps version, lastUpdated and body; counts are per type and source."""
    engine_store.put_resource(SOURCE, PATIENT, "h1")
    engine_store.put_resource("other-ehr", PATIENT, "h1")
    stored = engine_store.get_resource(SOURCE, "Patient", "p1")
    assert stored.version_id == "1"
    assert stored.last_updated == "2026-11-26T10:00:00Z"
    assert stored.body == PATIENT
    assert engine_store.get_resource(SOURCE, "Patient", "nope") is None
    assert engine_store.resource_counts() == {"Patient": 2}
    assert engine_store.resource_counts(SOURCE) == {"Patient": 1}


def test_resource_counts_count_each_resource_once(engine_store):
    """A new version of a resource does not add to the counts; other types count apart."""
    engine_store.put_resource(SOURCE, PATIENT, "h1")
    engine_store.put_resource(SOURCE, {**PATIENT, "birthDate": "1970-01-02"}, "h2")
    engine_store.put_resource(SOURCE, resource("CarePlan", "cp1"), "h3")
    assert engine_store.resource_counts(SOURCE) == {"Patient": 1, "CarePlan": 1}
    assert engine_store.resource_counts("nobody") == {}


def test_resources_for_patient_by_type_and_id(engine_store):
    """A patient's resources of one source list by type then id; a type narrows the list."""
    for rtype, rid in [("Condition", "x"), ("CarePlan", "c2"), ("CarePlan", "c10")]:
        engine_store.put_resource(SOURCE, resource(rtype, rid), rid)
    engine_store.put_resource(SOURCE, resource("Patient", "p1"), "p")
    engine_store.put_resource(SOURCE, resource("CarePlan", "other", patient="p2"), "o")
    engine_store.put_resource("other-ehr", resource("CarePlan", "c3"), "c3")
    engine_store.put_resource(SOURCE, resource("Organization", "org", patient=None), "org")

    found = engine_store.resources_for_patient(SOURCE, "Patient/p1")
    assert [(r.resource_type, r.id) for r in found] == [
        ("CarePlan", "c10"),
        ("CarePlan", "c2"),
        ("Condition", "x"),
        ("Patient", "p1"),
    ]
    assert (found[0].body, found[0].content_hash) == (resource("CarePlan", "c10"), "c10")
    care_plans = engine_store.resources_for_patient(SOURCE, "Patient/p1", "CarePlan")
    assert [r.id for r in care_plans] == ["c10", "c2"]
    assert engine_store.resources_for_patient(SOURCE, "Patient/p1", "Care") == []
    assert engine_store.resources_for_patient(SOURCE, "Patient/nobody") == []


def test_resources_for_patient_follows_a_changed_subject(engine_store):
    """A resource whose patient changes moves to the new patient's list."""
    engine_store.put_resource(SOURCE, resource("CarePlan", "c1", patient="p1"), "h1")
    engine_store.put_resource(SOURCE, resource("CarePlan", "c1", patient="p2"), "h2")
    assert engine_store.resources_for_patient(SOURCE, "Patient/p1") == []
    (moved,) = engine_store.resources_for_patient(SOURCE, "Patient/p2")
    assert (moved.id, moved.content_hash) == ("c1", "h2")


def test_delete_resource_forgets_it_everywhere(engine_store):
    """A deleted resource is gone from get, counts, the patient list and iteration; deleting
    it again (or something never stored) reports False; a later put stores it anew."""
    engine_store.put_resource(SOURCE, resource("CarePlan", "c1"), "h1")
    engine_store.put_resource(SOURCE, resource("CarePlan", "c2"), "h2")
    engine_store.put_resource("other-ehr", resource("CarePlan", "c1"), "h1")
    assert engine_store.delete_resource(SOURCE, "CarePlan", "c1") is True
    assert engine_store.get_resource(SOURCE, "CarePlan", "c1") is None
    assert engine_store.get_resource("other-ehr", "CarePlan", "c1") is not None
    assert engine_store.resource_counts(SOURCE) == {"CarePlan": 1}
    assert [r.id for r in engine_store.resources_for_patient(SOURCE, "Patient/p1")] == ["c2"]
    assert [r.id for r in engine_store.iter_resources("CarePlan", SOURCE)] == ["c2"]
    assert engine_store.delete_resource(SOURCE, "CarePlan", "c1") is False
    assert engine_store.delete_resource(SOURCE, "Coverage", "x") is False
    assert engine_store.delete_resource(SOURCE, "CarePlan", "c2") is True
    assert engine_store.resource_counts(SOURCE) == {}
    assert engine_store.put_resource(SOURCE, resource("CarePlan", "c1"), "h1") is True
    assert engine_store.resource_counts(SOURCE) == {"CarePlan": 1}


def test_iter_resources_pages_through_every_resource(engine_store):
    """iter_resources yields every resource of a type once, across pages and sources."""
    with engine_store.batch():
        for n in range(505):
            engine_store.put_resource(SOURCE, resource("CarePlan", f"c{n:03d}"), f"h{n}")
        engine_store.put_resource("other-ehr", resource("CarePlan", "c000"), "h")
        engine_store.put_resource(SOURCE, resource("Patient", "p1"), "p")
    everything = list(engine_store.iter_resources("CarePlan"))
    assert len(everything) == 506
    assert len({(r.source, r.id) for r in everything}) == 506
    mine = list(engine_store.iter_resources("CarePlan", SOURCE))
    assert [r.id for r in mine] == [f"c{n:03d}" for n in range(505)]
    assert [r.id for r in engine_store.iter_resources("Patient")] == ["p1"]
    assert list(engine_store.iter_resources("Coverage")) == []


def test_batch_keeps_every_write(engine_store):
    """Writes grouped in a batch are all readable after it."""
    with engine_store.batch():
        engine_store.put_resource(SOURCE, PATIENT, "h1")
        engine_store.set_cursor(SOURCE, "Patient", "2026-11-26T10:00:00Z")
        task = engine_store.upsert_task(draft(), NOW).task
    assert engine_store.get_resource(SOURCE, "Patient", "p1").content_hash == "h1"
    assert engine_store.get_cursor(SOURCE, "Patient") == "2026-11-26T10:00:00Z"
    assert engine_store.get_task(task.id) == task


# -- cursors --------------------------------------------------------------------------------


def test_cursor_set_get_and_forget(engine_store):
    """A cursor is None until set, reads back per source and type, and None forgets it."""
    assert engine_store.get_cursor(SOURCE, "Patient") is None
    engine_store.set_cursor(SOURCE, "Patient", "2026-11-26T10:00:00Z")
    engine_store.set_cursor(SOURCE, "Patient", "2026-11-26T11:00:00Z")
    assert engine_store.get_cursor(SOURCE, "Patient") == "2026-11-26T11:00:00Z"
    assert engine_store.get_cursor(SOURCE, "Appointment") is None
    assert engine_store.get_cursor("other-ehr", "Patient") is None
    engine_store.set_cursor(SOURCE, "Patient", None)
    assert engine_store.get_cursor(SOURCE, "Patient") is None


# -- quarantine -----------------------------------------------------------------------------


def test_quarantine_add_list_release(engine_store):
    """Entries list newest first with total; the latest failure per resource wins; release drops."""
    engine_store.add_quarantine(quarantine("a1", NOW))
    engine_store.add_quarantine(quarantine("a2", NOW + timedelta(seconds=1)))
    engine_store.add_quarantine(quarantine("a1", NOW + timedelta(seconds=2), version_id="4"))
    engine_store.add_quarantine(quarantine("x", NOW, source="other-ehr"))
    entries, total = engine_store.list_quarantine(SOURCE)
    assert total == 2
    assert [(e.resource_id, e.version_id) for e in entries] == [("a1", "4"), ("a2", "3")]
    assert entries[0].issues == quarantine("a1").issues
    assert entries[0].at == NOW + timedelta(seconds=2)
    assert engine_store.list_quarantine()[1] == 3

    engine_store.release_quarantine(SOURCE, "Appointment", "a1")
    entries, total = engine_store.list_quarantine(SOURCE)
    assert (total, [e.resource_id for e in entries]) == (1, ["a2"])


def test_quarantine_limit_and_offset(engine_store):
    """list_quarantine pages with limit and offset while total counts all."""
    for n in range(3):
        engine_store.add_quarantine(quarantine(f"a{n}", NOW + timedelta(seconds=n)))
    entries, total = engine_store.list_quarantine(limit=1, offset=1)
    assert (total, [e.resource_id for e in entries]) == (3, ["a1"])


def test_quarantine_same_instant_lists_by_id(engine_store):
    """Entries failing at the same instant list by resource id ("a1" before "a10")."""
    for rid in ("b", "a10", "a1"):
        engine_store.add_quarantine(quarantine(rid, NOW))
    engine_store.add_quarantine(quarantine("z", NOW + timedelta(microseconds=1)))
    entries, _ = engine_store.list_quarantine()
    assert [e.resource_id for e in entries] == ["z", "a1", "a10", "b"]


def test_quarantine_without_id(engine_store):
    """An entry without a resource id is kept and lists with resource_id None."""
    engine_store.add_quarantine(quarantine(None, body={"value": 42}))
    engine_store.add_quarantine(quarantine(None, NOW + timedelta(seconds=1), body={"value": 43}))
    entries, total = engine_store.list_quarantine()
    assert total == 2
    assert [(e.resource_id, e.body) for e in entries] == [
        (None, {"value": 43}),
        (None, {"value": 42}),
    ]


def test_quarantine_without_id_at_the_same_instant_keeps_both(engine_store):
    """Two id-less entries recorded at the same time are both kept ("none is lost")."""
    engine_store.add_quarantine(quarantine(None, body={"value": 42}))
    engine_store.add_quarantine(quarantine(None, body={"value": 43}))
    entries, total = engine_store.list_quarantine()
    assert total == 2
    assert sorted(e.body["value"] for e in entries) == [42, 43]


def test_quarantine_without_id_same_body_is_one_entry(engine_store):
    """The same id-less body failing twice is one entry: its content is its key."""
    engine_store.add_quarantine(quarantine(None, body={"value": 42}))
    engine_store.add_quarantine(quarantine(None, NOW + timedelta(seconds=1), body={"value": 42}))
    entries, total = engine_store.list_quarantine()
    assert (total, entries[0].at) == (1, NOW + timedelta(seconds=1))


# -- tasks ----------------------------------------------------------------------------------


def test_upsert_task_created_unchanged_updated(engine_store):
    """upsert_task creates, then finds nothing to change, then refreshes a changed title."""
    created = engine_store.upsert_task(draft(), NOW)
    assert (created.created, created.updated, created.task.version) == (True, False, 1)
    same = engine_store.upsert_task(draft(), NOW + timedelta(hours=1))
    assert (same.created, same.updated, same.task) == (False, False, created.task)
    later = NOW + timedelta(hours=2)
    refreshed = engine_store.upsert_task(draft(title="Reach out again", focus_version="2"), later)
    assert (refreshed.created, refreshed.updated) == (False, True)
    stored = engine_store.get_task(created.task.id)
    assert (stored.title, stored.focus_version, stored.version) == ("Reach out again", "2", 2)
    assert (stored.created_at, stored.updated_at) == (NOW, later)
    assert [e.action for e in engine_store.task_history(stored.id)] == ["created", "refreshed"]


def test_task_history_records_events(engine_store):
    """task_history gives every event's fields back, oldest first; an unknown task has none."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW))
    created, changed = engine_store.task_history(task.id)
    assert created == TaskEvent(
        task.id, NOW, "bridge", "created", None, "open", {"focus_version": "1"}
    )
    assert changed == TaskEvent(task.id, NOW, "alice", "status", "open", "in-progress", {})
    assert engine_store.task_history("0" * 20) == []


def test_task_histories_read_many_tasks_at_once(engine_store):
    """task_histories gives each task's events as task_history does, by id; unknown ids map
    to no events; a repeated id is answered once."""
    first = engine_store.upsert_task(draft(), NOW).task
    second = engine_store.upsert_task(draft(focus_id="a2"), NOW).task
    engine_store.update_task(first.id, mirror_change(TaskStatus.IN_PROGRESS, NOW))
    unknown = "0" * 20
    found = engine_store.task_histories([first.id, second.id, unknown, first.id])
    assert found == {
        first.id: engine_store.task_history(first.id),
        second.id: engine_store.task_history(second.id),
        unknown: [],
    }
    assert [e.action for e in found[first.id]] == ["created", "status"]
    assert engine_store.task_histories([]) == {}


def test_upsert_twice_never_duplicates(engine_store):
    """The same identity upserted twice is one task."""
    engine_store.upsert_task(draft(), NOW)
    engine_store.upsert_task(draft(title="changed"), NOW)
    page = engine_store.list_tasks()
    assert page.total == 1
    assert [t.title for t in page.items] == ["changed"]


def test_concurrent_upserts_of_one_draft_make_one_task(engine_store):
    """Two threads upserting the same draft at once: one creates, the other finds it."""
    results = run_together(2, lambda _: engine_store.upsert_task(draft(), NOW))
    assert sorted(r.created for r in results) == [False, True]
    assert engine_store.list_tasks().total == 1
    assert [e.action for e in engine_store.task_history(draft().id)] == ["created"]


def test_upsert_keeps_coordinator_state(engine_store):
    """Refreshing a claimed task keeps its status and assignee."""
    task = engine_store.upsert_task(draft(), NOW).task

    def claim(current: Task) -> TaskChange:
        """Assign the task to alice."""
        new = replace(current, status=TaskStatus.IN_PROGRESS, assignee="alice", version=2)
        return TaskChange(new, TaskEvent(current.id, NOW, "alice", "claim", "open", "in-progress"))

    engine_store.update_task(task.id, claim)
    engine_store.upsert_task(draft(title="changed"), NOW)
    stored = engine_store.get_task(task.id)
    assert (stored.status, stored.assignee, stored.title) == (
        TaskStatus.IN_PROGRESS,
        "alice",
        "changed",
    )


def test_task_round_trips_every_field(engine_store):
    """Every Task field set by a change reads back equal (a new field must be stored too)."""
    task = engine_store.upsert_task(draft(), NOW).task
    values = {
        "focus_version": "7",
        "patient": "Patient/p9",
        "queue": "insurance",
        "kind": "prior-authorization",
        "title": "Chase the approval",
        "priority": Priority.ASAP,
        "due": datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        "status": TaskStatus.IN_PROGRESS,
        "assignee": "bob",
        "created_at": NOW - timedelta(days=1),
        "updated_at": NOW + timedelta(microseconds=1),
        "version": 5,
        "mirror_id": "Task/m1",
        "mirror_version": "3",
        "description": "Payer asked for the referral letter",
        "labels": ("payer:acme", "urgent-review"),
    }
    identity = {"id", "rule_id", "source", "focus_type", "focus_id"}
    unset = [f.name for f in dataclasses.fields(Task) if f.name not in {*values, *identity}]
    assert unset == [], "extend this test (and every engine) with the new Task fields"
    changed = replace(task, **values)

    def change(current: Task) -> TaskChange:
        """Set every field."""
        return TaskChange(changed, TaskEvent(current.id, NOW, "bob", "edit"))

    assert engine_store.update_task(task.id, change) == changed
    assert engine_store.get_task(task.id) == changed
    assert engine_store.list_tasks(queue="insurance").items == [changed]


def test_draft_assignee_description_and_labels_are_kept(engine_store):
    """A draft's assignee, description and labels land on the task; a label change refreshes."""
    first = draft(assignee="carol", description="Call twice", labels=("a", "b"))
    task = engine_store.upsert_task(first, NOW).task
    assert engine_store.get_task(task.id) == task
    assert (task.assignee, task.description, task.labels) == ("carol", "Call twice", ("a", "b"))
    again = engine_store.upsert_task(replace(first, labels=("a",)), NOW)
    assert (again.updated, engine_store.get_task(task.id).labels) == (True, ("a",))


def seed_ordering(store) -> dict[str, str]:
    """Tasks whose priority and due dates are shuffled; returns focus id -> task id."""
    due = NOW + timedelta(days=1)
    drafts = [
        draft("routine", priority=Priority.ROUTINE, due=due - timedelta(days=1)),
        draft("urgent-none", priority=Priority.URGENT, due=None),
        draft("urgent-late", priority=Priority.URGENT, due=due + timedelta(days=3)),
        draft("stat", priority=Priority.STAT, due=None),
        draft("urgent-early", priority=Priority.URGENT, due=due),
        draft("asap", priority=Priority.ASAP, due=due + timedelta(days=9)),
    ]
    return {d.focus_id: store.upsert_task(d, NOW).task.id for d in drafts}


def test_list_tasks_orders_by_priority_then_due(engine_store):
    """stat > asap > urgent > routine, then due ascending with no due last."""
    seed_ordering(engine_store)
    page = engine_store.list_tasks()
    assert page.total == 6
    assert [t.focus_id for t in page.items] == [
        "stat",
        "asap",
        "urgent-early",
        "urgent-late",
        "urgent-none",
        "routine",
    ]


def test_list_tasks_ties_order_by_id_and_due_by_instant(engine_store):
    """Equal priority and due order by id; due dates in other time zones order by instant."""
    plus2 = timezone(timedelta(hours=2))
    drafts = [
        draft("x", due=datetime(2026, 12, 1, 11, 0, tzinfo=plus2)),  # 09:00 UTC
        draft("y", due=datetime(2026, 12, 1, 10, 0, tzinfo=plus2)),  # 08:00 UTC
        draft("tie-1", due=None),
        draft("tie-2", due=None),
    ]
    for d in drafts:
        engine_store.upsert_task(d, NOW)
    ties = sorted(d.id for d in drafts[2:])
    listed = [t.focus_id for t in engine_store.list_tasks().items]
    assert listed[:2] == ["y", "x"]
    assert [draft(f).id for f in listed[2:]] == ties


def test_list_tasks_follows_a_refresh(engine_store):
    """A refresh that raises the priority moves the task up the listing."""
    seed_ordering(engine_store)
    engine_store.upsert_task(draft("routine", priority=Priority.STAT, due=NOW), NOW)
    page = engine_store.list_tasks(limit=2)
    assert [t.focus_id for t in page.items] == ["routine", "stat"]
    assert page.total == 6


def test_list_tasks_filters_and_pages(engine_store):
    """Status, queue and rule filters narrow the listing; total counts all matches."""
    ids = seed_ordering(engine_store)
    for focus in ("asap", "urgent-late"):
        engine_store.update_task(ids[focus], mirror_change(TaskStatus.COMPLETED, NOW))
    open_page = engine_store.list_tasks(statuses=[TaskStatus.OPEN], limit=2, offset=1)
    assert open_page.total == 4
    assert [t.focus_id for t in open_page.items] == ["urgent-early", "urgent-none"]
    done = engine_store.list_tasks(statuses=[TaskStatus.COMPLETED, TaskStatus.CANCELLED])
    assert [t.focus_id for t in done.items] == ["asap", "urgent-late"]
    assert engine_store.list_tasks(queue="insurance").total == 0
    assert engine_store.list_tasks(rule_id="no-show-outreach").total == 6
    assert len(list(engine_store.iter_tasks(queue="scheduling"))) == 6


def test_list_tasks_by_rule_combined_with_queue_and_status(engine_store):
    """rule_id narrows alone and together with queue and statuses, in listing order."""
    ids = seed_ordering(engine_store)
    other = draft("cer", rule_id="prior-authorization", queue="insurance", priority=Priority.STAT)
    other_id = engine_store.upsert_task(other, NOW).task.id
    engine_store.update_task(ids["stat"], mirror_change(TaskStatus.IN_PROGRESS, NOW))
    engine_store.update_task(other_id, mirror_change(TaskStatus.IN_PROGRESS, NOW))

    by_rule = engine_store.list_tasks(rule_id="prior-authorization")
    assert (by_rule.total, [t.id for t in by_rule.items]) == (1, [other_id])
    assert engine_store.list_tasks(rule_id="unknown-rule").total == 0
    active = engine_store.list_tasks(
        rule_id="no-show-outreach",
        statuses=[TaskStatus.OPEN, TaskStatus.IN_PROGRESS],
        limit=3,
    )
    assert active.total == 6
    assert [t.focus_id for t in active.items] == ["stat", "asap", "urgent-early"]
    claimed = engine_store.list_tasks(
        queue="scheduling", statuses=[TaskStatus.IN_PROGRESS], rule_id="no-show-outreach"
    )
    assert [t.focus_id for t in claimed.items] == ["stat"]
    assert engine_store.list_tasks(queue="insurance", rule_id="no-show-outreach").total == 0
    everything = engine_store.list_tasks(queue="insurance", statuses=[TaskStatus.IN_PROGRESS])
    assert [t.id for t in everything.items] == [other_id]


def test_list_tasks_offset_past_the_end(engine_store):
    """An offset past the last task gives an empty page with the full total."""
    seed_ordering(engine_store)
    page = engine_store.list_tasks(statuses=[TaskStatus.OPEN], offset=10)
    assert (page.items, page.total) == ([], 6)


def test_iter_tasks_across_pages(engine_store):
    """iter_tasks yields every matching task once, across its pages of 500."""
    with engine_store.batch():
        for n in range(503):
            engine_store.upsert_task(draft(f"t{n:03d}"), NOW)
        engine_store.upsert_task(draft("cer", queue="insurance"), NOW)
    tasks = list(engine_store.iter_tasks(queue="scheduling"))
    assert len(tasks) == 503
    assert len({t.id for t in tasks}) == 503
    assert [t.focus_id for t in engine_store.iter_tasks(queue="insurance")] == ["cer"]


def test_queue_counts(engine_store):
    """queue_counts gives per queue the number of tasks in each status."""
    ids = seed_ordering(engine_store)
    engine_store.upsert_task(draft("cer", queue="insurance", rule_id="prior-authorization"), NOW)
    engine_store.update_task(ids["stat"], mirror_change(TaskStatus.IN_PROGRESS, NOW))
    assert engine_store.queue_counts() == {
        "scheduling": {"open": 5, "in-progress": 1},
        "insurance": {"open": 1},
    }


def test_queue_counts_follow_a_task_to_another_queue(engine_store):
    """A refresh that moves the only task of a queue empties that queue from the counts."""
    engine_store.upsert_task(draft(), NOW)
    engine_store.upsert_task(draft(queue="records"), NOW)
    assert engine_store.queue_counts() == {"records": {"open": 1}}
    assert engine_store.list_tasks(queue="scheduling").total == 0
    assert engine_store.list_tasks(queue="records").total == 1


def test_update_task_unknown_id(engine_store):
    """update_task on a missing id raises TaskNotFound and creates nothing."""
    with pytest.raises(TaskNotFound):
        engine_store.update_task("0" * 20, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 1}))
    assert engine_store.get_task("0" * 20) is None
    assert engine_store.list_outbox() == []


def test_update_task_failing_change_writes_nothing(engine_store):
    """A change function that raises leaves task, history and outbox untouched."""
    task = engine_store.upsert_task(draft(), NOW).task

    def change(current: Task) -> TaskChange:
        """Refuse, as a state machine would."""
        raise RuntimeError("state machine says no")

    with pytest.raises(RuntimeError):
        engine_store.update_task(task.id, change)
    assert engine_store.get_task(task.id) == task
    assert len(engine_store.task_history(task.id)) == 1
    assert engine_store.list_outbox() == []


def test_update_task_is_all_or_nothing(engine_store):
    """When writing the outbox fails after task and event were written, all is rolled back."""
    task = engine_store.upsert_task(draft(), NOW).task
    unserialisable = {"at": object()}
    with pytest.raises(TypeError):
        engine_store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, unserialisable))
    assert engine_store.get_task(task.id) == task
    assert len(engine_store.task_history(task.id)) == 1
    assert engine_store.list_outbox() == []
    assert engine_store.list_tasks(statuses=[TaskStatus.COMPLETED]).total == 0


def test_concurrent_claims_let_exactly_one_win(engine_store):
    """Eight threads claiming one open task: one succeeds, seven get TaskConflict."""
    task = engine_store.upsert_task(draft(), NOW).task
    results = run_together(8, lambda i: engine_store.update_task(task.id, claim_by(f"c{i}")))
    winners = [r for r in results if isinstance(r, Task)]
    assert len(winners) == 1
    assert all(isinstance(r, TaskConflict) for r in results if r is not winners[0])
    stored = engine_store.get_task(task.id)
    assert (stored.assignee, stored.version) == (winners[0].assignee, 2)
    assert [e.action for e in engine_store.task_history(task.id)] == ["created", "claim"]
    assert len(engine_store.list_outbox()) == 1


def test_set_task_mirror(engine_store):
    """set_task_mirror records the mirror's id and version on the task."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.set_task_mirror(task.id, "Task/99", "3")
    stored = engine_store.get_task(task.id)
    assert (stored.mirror_id, stored.mirror_version) == ("Task/99", "3")
    assert replace(stored, mirror_id=None, mirror_version=None) == task


def test_set_task_mirror_without_version_and_on_unknown_task(engine_store):
    """A None version clears the old one; an unknown task id is left alone (not created)."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.set_task_mirror(task.id, "Task/99", "3")
    engine_store.set_task_mirror(task.id, "Task/100", None)
    stored = engine_store.get_task(task.id)
    assert (stored.mirror_id, stored.mirror_version) == ("Task/100", None)
    engine_store.set_task_mirror("0" * 20, "Task/1", "1")
    assert engine_store.get_task("0" * 20) is None
    assert engine_store.list_tasks().total == 1


# -- outbox ---------------------------------------------------------------------------------


def test_due_outbox_returns_oldest_pending_per_task(engine_store):
    """Only the oldest pending entry of each task is due, so a task's writes go in order."""
    a = engine_store.upsert_task(draft("a"), NOW).task
    b = engine_store.upsert_task(draft("b"), NOW).task
    engine_store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "a1"}))
    engine_store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "b1"}))
    engine_store.update_task(a.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": "a2"}))
    due = engine_store.due_outbox(NOW)
    assert [e.payload["n"] for e in due] == ["a1", "b1"]

    engine_store.outbox_delivered(due[0].id, NOW)
    assert [e.payload["n"] for e in engine_store.due_outbox(NOW)] == ["b1", "a2"]


def test_due_outbox_respects_next_attempt_at(engine_store):
    """An entry is not due before next_attempt_at; a later entry of its task waits too."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    engine_store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 2}))
    assert engine_store.due_outbox(NOW - timedelta(seconds=1)) == []
    (first,) = engine_store.due_outbox(NOW)
    retry_at = NOW + timedelta(minutes=1)
    engine_store.outbox_retry(first.id, "503 from server", retry_at)
    assert engine_store.due_outbox(NOW + timedelta(seconds=59)) == []
    assert [e.id for e in engine_store.due_outbox(retry_at)] == [first.id]


def test_due_outbox_after_dead_entry_moves_on(engine_store):
    """A dead entry stops blocking its task: the next entry is due at its own time."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    later = NOW + timedelta(minutes=5)
    engine_store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, later, {"n": 2}))
    (first,) = engine_store.due_outbox(later)
    engine_store.outbox_retry(first.id, "timeout", NOW + timedelta(hours=1))
    engine_store.outbox_dead(first.id, "422 unprocessable")
    assert engine_store.due_outbox(NOW) == []
    assert [e.payload["n"] for e in engine_store.due_outbox(later)] == [2]


def test_due_outbox_several_entries_in_one_change(engine_store):
    """Two entries queued by one change go out one after the other, in order."""
    task = engine_store.upsert_task(draft(), NOW).task
    change = mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2})
    engine_store.update_task(task.id, change)
    (first,) = engine_store.due_outbox(NOW)
    assert first.payload == {"n": 1}
    engine_store.outbox_delivered(first.id, NOW)
    (second,) = engine_store.due_outbox(NOW)
    assert (second.payload, second.id > first.id) == ({"n": 2}, True)
    engine_store.outbox_delivered(second.id, NOW)
    assert engine_store.due_outbox(NOW + timedelta(days=1)) == []


def test_due_outbox_limit(engine_store):
    """due_outbox returns at most `limit` entries, oldest first."""
    for n in range(3):
        task = engine_store.upsert_task(draft(f"t{n}"), NOW).task
        engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": n}))
    assert [e.payload["n"] for e in engine_store.due_outbox(NOW, limit=2)] == [0, 1]


def test_outbox_retry_delivered_dead_bookkeeping(engine_store):
    """retry counts an attempt and keeps pending; delivered and dead set status and attempts."""
    a = engine_store.upsert_task(draft("a"), NOW).task
    b = engine_store.upsert_task(draft("b"), NOW).task
    engine_store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "a"}))
    engine_store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "b"}))
    entry_a, entry_b = engine_store.list_outbox()
    assert (entry_a.status, entry_a.attempts, entry_a.last_error) == (
        OutboxStatus.PENDING,
        0,
        None,
    )
    assert entry_a.next_attempt_at == entry_a.created_at == NOW

    later = NOW + timedelta(seconds=30)
    engine_store.outbox_retry(entry_a.id, "timeout", later)
    (retried,) = engine_store.list_outbox(task_id=a.id)
    assert (retried.status, retried.attempts, retried.last_error) == (
        OutboxStatus.PENDING,
        1,
        "timeout",
    )
    assert retried.next_attempt_at == later

    engine_store.outbox_delivered(entry_a.id, later)
    (delivered,) = engine_store.list_outbox(status=OutboxStatus.DELIVERED)
    assert (delivered.id, delivered.attempts, delivered.last_error) == (entry_a.id, 2, None)
    assert delivered.delivered_at == later

    engine_store.outbox_dead(entry_b.id, "422 unprocessable")
    (dead,) = engine_store.list_outbox(status=OutboxStatus.DEAD)
    assert (dead.id, dead.attempts, dead.last_error) == (entry_b.id, 1, "422 unprocessable")
    assert engine_store.list_outbox(status=OutboxStatus.PENDING) == []
    assert engine_store.due_outbox(later + timedelta(days=1)) == []


def test_list_outbox_filters_combine_and_limit(engine_store):
    """list_outbox narrows by task and status together, oldest first, at most `limit`."""
    a = engine_store.upsert_task(draft("a"), NOW).task
    b = engine_store.upsert_task(draft("b"), NOW).task
    engine_store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    engine_store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 2}))
    engine_store.update_task(a.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 3}))
    first = engine_store.list_outbox(task_id=a.id)[0]
    engine_store.outbox_delivered(first.id, NOW)

    assert [e.payload["n"] for e in engine_store.list_outbox()] == [1, 2, 3]
    assert [e.payload["n"] for e in engine_store.list_outbox(limit=2)] == [1, 2]
    pending_a = engine_store.list_outbox(status=OutboxStatus.PENDING, task_id=a.id)
    assert [e.payload["n"] for e in pending_a] == [3]
    assert [e.payload["n"] for e in engine_store.list_outbox(task_id=a.id, limit=1)] == [1]
    assert engine_store.list_outbox(task_id="0" * 20) == []
    entry = engine_store.list_outbox(task_id=b.id)[0]
    assert (entry.task_id, entry.source, entry.action) == (b.id, SOURCE, MIRROR_ACTION)


def test_outbox_changes_to_unknown_entries_are_ignored(engine_store):
    """Delivered, retry and dead on an id that does not exist change nothing."""
    engine_store.outbox_delivered(999, NOW)
    engine_store.outbox_retry(999, "timeout", NOW)
    engine_store.outbox_dead(999, "gone")
    assert engine_store.list_outbox() == []


def test_get_outbox_reads_one_entry(engine_store):
    """get_outbox returns the entry as listed, and None for an unknown id."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    (listed,) = engine_store.list_outbox()
    assert engine_store.get_outbox(listed.id) == listed
    assert listed.detail is None
    assert engine_store.get_outbox(999) is None


def test_outbox_park_keeps_detail_and_unblocks_the_task(engine_store):
    """A parked entry keeps its status, error and detail; the task's next entry becomes due."""
    task = engine_store.upsert_task(draft(), NOW).task
    change = mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2}, {"n": 3})
    engine_store.update_task(task.id, change)
    first, second, _ = engine_store.list_outbox()
    diff = {"fields": [{"path": "status", "ours": "booked", "theirs": "cancelled"}]}
    engine_store.outbox_park(first.id, OutboxStatus.CONFLICT, "the EHR moved on", diff)
    engine_store.outbox_park(second.id, OutboxStatus.DEAD, "HTTP 422", {"status": 422})
    parked = engine_store.get_outbox(first.id)
    assert (parked.status, parked.attempts, parked.last_error, parked.detail) == (
        OutboxStatus.CONFLICT,
        1,
        "the EHR moved on",
        diff,
    )
    assert engine_store.get_outbox(second.id).detail == {"status": 422}
    assert [e.payload["n"] for e in engine_store.due_outbox(NOW)] == [3]
    assert [e.id for e in engine_store.list_outbox(status=OutboxStatus.CONFLICT)] == [first.id]
    with pytest.raises(ValueError, match="dead or conflict"):
        engine_store.outbox_park(first.id, OutboxStatus.DELIVERED, "no", {})


def test_outbox_requeue_puts_an_entry_back_in_order(engine_store):
    """A requeued dead entry is pending again with a fresh budget and goes before later ones."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(
        task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2})
    )
    first, second = engine_store.list_outbox()
    engine_store.outbox_retry(first.id, "timeout", NOW)
    engine_store.outbox_park(first.id, OutboxStatus.DEAD, "budget spent", {"status": 503})
    assert [e.id for e in engine_store.due_outbox(NOW)] == [second.id]
    later = NOW + timedelta(minutes=1)
    assert engine_store.outbox_requeue(first.id, later) is True
    requeued = engine_store.get_outbox(first.id)
    assert (requeued.status, requeued.attempts, requeued.next_attempt_at) == (
        OutboxStatus.PENDING,
        0,
        later,
    )
    assert engine_store.due_outbox(NOW) == []
    assert [e.id for e in engine_store.due_outbox(later)] == [first.id]
    engine_store.outbox_delivered(first.id, later)
    assert [e.id for e in engine_store.due_outbox(later)] == [second.id]


def test_outbox_requeue_only_dead_or_conflict(engine_store):
    """Requeue refuses pending, delivered, discarded and unknown entries."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(
        task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2})
    )
    first, second = engine_store.list_outbox()
    assert engine_store.outbox_requeue(first.id, NOW) is False
    engine_store.outbox_delivered(first.id, NOW)
    assert engine_store.outbox_requeue(first.id, NOW) is False
    engine_store.outbox_discard(second.id, "not needed")
    assert engine_store.outbox_requeue(second.id, NOW) is False
    assert engine_store.outbox_requeue(999, NOW) is False
    assert engine_store.get_outbox(first.id).status is OutboxStatus.DELIVERED


def test_outbox_discard_takes_an_entry_out_of_delivery(engine_store):
    """A discarded entry keeps the reason, leaves delivery, and cannot be discarded twice."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(
        task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2})
    )
    first, second = engine_store.list_outbox()
    assert engine_store.outbox_discard(first.id, "operator: duplicate") is True
    gone = engine_store.get_outbox(first.id)
    assert (gone.status, gone.last_error, gone.attempts) == (
        OutboxStatus.DISCARDED,
        "operator: duplicate",
        0,
    )
    assert [e.id for e in engine_store.due_outbox(NOW)] == [second.id]
    assert engine_store.outbox_discard(first.id, "again") is False
    engine_store.outbox_delivered(second.id, NOW)
    assert engine_store.outbox_discard(second.id, "late") is False
    assert engine_store.outbox_discard(999, "unknown") is False
    assert engine_store.due_outbox(NOW) == []


# -- outbox claims (how consumers share delivery) ---------------------------------------------


def settle(store, claims, outcome: Callable[[int], None]) -> None:
    """Record `outcome` for every claim's entry, then acknowledge the claim."""
    for claim in claims:
        outcome(claim.entry.id)
        store.ack_outbox(claim)


def test_claims_hand_out_due_heads_in_task_order(engine_store):
    """A consumer claims each task's oldest pending entry; the next one after it is recorded."""
    a = engine_store.upsert_task(draft("a"), NOW).task
    b = engine_store.upsert_task(draft("b"), NOW).task
    engine_store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "a1"}))
    engine_store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "b1"}))
    engine_store.update_task(a.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": "a2"}))
    claims = engine_store.claim_outbox("w1", NOW)
    assert sorted(c.entry.payload["n"] for c in claims) == ["a1", "b1"]
    assert all(c.entry.status is OutboxStatus.PENDING for c in claims)
    assert engine_store.touch_outbox("w1", claims) == 2
    settle(engine_store, claims, lambda i: engine_store.outbox_delivered(i, NOW))
    [last] = engine_store.claim_outbox("w1", NOW)
    assert last.entry.payload["n"] == "a2"
    settle(engine_store, [last], lambda i: engine_store.outbox_delivered(i, NOW))
    assert engine_store.claim_outbox("w1", NOW + timedelta(days=1)) == []
    engine_store.outbox_consumer_done("w1")
    assert {e.status for e in engine_store.list_outbox()} == {OutboxStatus.DELIVERED}


def test_claims_wait_for_the_retry_time(engine_store):
    """A retried entry is claimed again only once its next attempt is due, and its task's
    later entry waits behind it."""
    task = engine_store.upsert_task(draft(), NOW).task
    engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    engine_store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 2}))
    [claim] = engine_store.claim_outbox("w1", NOW)
    retry_at = NOW + timedelta(minutes=1)
    settle(engine_store, [claim], lambda i: engine_store.outbox_retry(i, "503", retry_at))
    assert engine_store.claim_outbox("w1", NOW + timedelta(seconds=59)) == []
    [again] = engine_store.claim_outbox("w1", retry_at)
    assert (again.entry.id, again.entry.attempts) == (claim.entry.id, 1)
    settle(engine_store, [again], lambda i: engine_store.outbox_delivered(i, retry_at))
    [second] = engine_store.claim_outbox("w1", retry_at)
    assert second.entry.payload == {"n": 2}


def test_claims_follow_park_requeue_and_discard(engine_store):
    """A parked head lets the next entry be claimed; a requeued one is claimed before it."""
    task = engine_store.upsert_task(draft(), NOW).task
    change = mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}, {"n": 2}, {"n": 3})
    engine_store.update_task(task.id, change)
    first, second, third = engine_store.list_outbox()
    [claim] = engine_store.claim_outbox("w1", NOW)
    assert claim.entry.id == first.id
    settle(
        engine_store,
        [claim],
        lambda i: engine_store.outbox_park(i, OutboxStatus.DEAD, "HTTP 422", {"status": 422}),
    )
    later = NOW + timedelta(minutes=1)
    assert engine_store.outbox_requeue(first.id, later) is True
    [requeued] = engine_store.claim_outbox("w1", later)
    assert (requeued.entry.id, requeued.entry.attempts) == (first.id, 0)
    settle(engine_store, [requeued], lambda i: engine_store.outbox_delivered(i, later))
    assert engine_store.outbox_discard(second.id, "operator") is True
    [last] = engine_store.claim_outbox("w1", later)
    assert last.entry.id == third.id


def test_claims_limit(engine_store):
    """claim_outbox hands out at most `limit` entries; the rest are claimed later."""
    for n in range(3):
        task = engine_store.upsert_task(draft(f"t{n}"), NOW).task
        engine_store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": n}))
    claims = engine_store.claim_outbox("w1", NOW, limit=2)
    assert len(claims) == 2
    settle(engine_store, claims, lambda i: engine_store.outbox_delivered(i, NOW))
    [rest] = engine_store.claim_outbox("w1", NOW, limit=2)
    assert rest.entry.id not in {c.entry.id for c in claims}


# -- task listing: filters, cursors, due counts ---------------------------------------------


def seed_filters(store) -> dict[str, str]:
    """Tasks that differ in kind, assignee, patient, labels and due; focus id -> task id."""
    drafts = [
        draft("k1", kind="confirm", due=NOW - timedelta(hours=2), labels=("vip",)),
        draft("k2", kind="confirm", due=NOW + timedelta(hours=3), assignee="ann"),
        draft("k3", kind="no-show-outreach", due=NOW + timedelta(days=2), patient="Patient/p2"),
        draft("k4", kind="no-show-outreach", due=None, labels=("vip", "lang-es")),
        draft("k5", queue="insurance", kind="verify", due=NOW - timedelta(days=1)),
    ]
    return {d.focus_id: store.upsert_task(d, NOW).task.id for d in drafts}


def focus_ids(page) -> list[str]:
    """The focus ids of a page, in listing order."""
    return [t.focus_id for t in page.items]


def test_list_tasks_filters_by_kind_assignee_patient_and_label(engine_store):
    """kind, assignee, patient and label each narrow the listing, alone and combined."""
    seed_filters(engine_store)
    assert focus_ids(engine_store.list_tasks(kind="confirm")) == ["k1", "k2"]
    assert focus_ids(engine_store.list_tasks(assignee="ann")) == ["k2"]
    assert focus_ids(engine_store.list_tasks(patient="Patient/p2")) == ["k3"]
    assert sorted(focus_ids(engine_store.list_tasks(label="vip"))) == ["k1", "k4"]
    assert engine_store.list_tasks(label="lang").total == 0
    both = engine_store.list_tasks(queue="scheduling", label="vip", kind="no-show-outreach")
    assert (focus_ids(both), both.total) == (["k4"], 1)
    assert engine_store.list_tasks(patient="Patient/p1", queue="insurance").total == 1
    assert engine_store.list_tasks(assignee="ann", statuses=[TaskStatus.COMPLETED]).total == 0


def test_list_tasks_filters_by_due_range(engine_store):
    """due_after is inclusive, due_before exclusive; either leaves out tasks with no due date."""
    seed_filters(engine_store)
    overdue = engine_store.list_tasks(due_before=NOW)
    assert sorted(focus_ids(overdue)) == ["k1", "k5"]
    later = engine_store.list_tasks(due_after=NOW + timedelta(hours=3))
    assert focus_ids(later) == ["k2", "k3"]
    window = engine_store.list_tasks(
        due_after=NOW - timedelta(hours=2), due_before=NOW + timedelta(days=2)
    )
    assert focus_ids(window) == ["k1", "k2"]
    assert engine_store.list_tasks(due_after=NOW, queue="insurance").total == 0


def test_list_tasks_assignee_filter_follows_a_claim(engine_store):
    """A claimed task is listed under its new assignee at once."""
    ids = seed_filters(engine_store)
    engine_store.update_task(ids["k3"], claim_by("bob"))
    assert focus_ids(engine_store.list_tasks(assignee="bob")) == ["k3"]
    assert focus_ids(engine_store.list_tasks(assignee="bob", kind="confirm")) == []


def test_list_tasks_cursor_walks_every_task_once_in_order(engine_store):
    """Pages chained by cursor give the unpaged listing exactly; total stays the full count."""
    seed_ordering(engine_store)
    seed_filters(engine_store)
    everything = focus_ids(engine_store.list_tasks(limit=100))
    seen, after, pages = [], None, 0
    while True:
        page = engine_store.list_tasks(limit=3, after=after)
        assert page.total == len(everything)
        seen += focus_ids(page)
        pages += 1
        if not page.more:
            break
        after = TaskCursor.after(page.items[-1])
    assert seen == everything and pages == 4


def test_list_tasks_cursor_with_filters(engine_store):
    """A cursor combines with unindexed filters (kind) and keeps their order."""
    seed_filters(engine_store)
    first = engine_store.list_tasks(kind="no-show-outreach", limit=1)
    assert (focus_ids(first), first.more, first.total) == (["k3"], True, 2)
    rest = engine_store.list_tasks(
        kind="no-show-outreach", limit=1, after=TaskCursor.after(first.items[0])
    )
    assert (focus_ids(rest), rest.more, rest.total) == (["k4"], False, 2)


def test_list_tasks_cursor_is_stable_when_earlier_tasks_leave(engine_store):
    """Closing a task already listed neither skips nor repeats the next page (unlike offset)."""
    ids = seed_ordering(engine_store)
    first = engine_store.list_tasks(statuses=[TaskStatus.OPEN], limit=2)
    assert focus_ids(first) == ["stat", "asap"]
    engine_store.update_task(ids["stat"], mirror_change(TaskStatus.COMPLETED, NOW))
    rest = engine_store.list_tasks(
        statuses=[TaskStatus.OPEN], limit=2, after=TaskCursor.after(first.items[-1])
    )
    assert focus_ids(rest) == ["urgent-early", "urgent-late"] and rest.more


def test_list_tasks_more_flag_with_offset(engine_store):
    """`more` says whether tasks follow the page, with plain offsets too."""
    seed_ordering(engine_store)
    assert engine_store.list_tasks(limit=5).more is True
    assert engine_store.list_tasks(limit=5, offset=1).more is False
    assert engine_store.list_tasks(limit=6).more is False


def test_due_counts_per_queue(engine_store):
    """Active tasks only: overdue before now, due today from now to the day's end."""
    ids = seed_filters(engine_store)
    engine_store.upsert_task(draft("k6", due=NOW + timedelta(hours=1)), NOW)
    engine_store.update_task(ids["k2"], mirror_change(TaskStatus.COMPLETED, NOW))
    day_end = NOW.replace(hour=0) + timedelta(days=1)
    counts = engine_store.due_counts(NOW, day_end)
    assert counts == {
        "scheduling": DueCounts(overdue=1, due_today=1),
        "insurance": DueCounts(overdue=1, due_today=0),
    }


def test_task_cursor_round_trips_and_refuses_garbage():
    """A cursor token decodes to the same place; tokens not made by encode are ValueError."""
    cursor = TaskCursor(Priority.URGENT, NOW, "abc")
    assert TaskCursor.decode(cursor.encode()) == cursor
    assert TaskCursor.decode(TaskCursor(Priority.STAT, None, "x").encode()).due is None
    for bad in ("", "!!", "bm90IGpzb24", TaskCursor(Priority.URGENT, NOW, "a").encode()[:-3]):
        with pytest.raises(ValueError):
            TaskCursor.decode(bad)


# -- audit trail -------------------------------------------------------------------------------


def audit(n: int, **changes) -> AuditRecord:
    """An audit record `n` seconds after NOW: dana read patient p1's history from 10.0.0.1."""
    fields = {
        "recorded": NOW + timedelta(seconds=n),
        "subtype": "patient-history",
        "action": "R",
        "outcome": "0",
        "agent": "dana",
        "roles": ("coordinator",),
        "address": "10.0.0.1",
        "patient": "Patient/p1",
        "source": SOURCE,
        "status_code": 200,
    }
    return AuditRecord(**(fields | changes))


def test_audit_add_and_list_newest_first(engine_store):
    """Records come back whole, newest first, with increasing ids the store gave them."""
    first = engine_store.add_audit(audit(0))
    second = engine_store.add_audit(audit(1, subtype="task-claim", action="U", task_id="t1"))
    assert second > first
    records, cursor = engine_store.list_audit()
    assert cursor is None
    assert [r.id for r in records] == [second, first]
    assert records[0] == dataclasses.replace(
        audit(1, subtype="task-claim", action="U", task_id="t1"), id=second
    )
    assert records[1].roles == ("coordinator",)
    assert records[1].recorded == NOW


def test_audit_filters(engine_store):
    """agent, patient, task and time filters each keep exactly the matching records."""
    engine_store.add_audit(audit(0))
    engine_store.add_audit(audit(1, agent="eli", patient="Patient/p2"))
    engine_store.add_audit(audit(2, task_id="t9", subtype="task-status", action="U"))
    engine_store.add_audit(audit(3, agent="eli"))

    def subjects(**filters) -> list[tuple[str, str | None, int]]:
        records, _ = engine_store.list_audit(AuditFilter(**filters))
        return [(r.agent, r.patient, (r.recorded - NOW).seconds) for r in records]

    assert subjects(agent="eli") == [("eli", "Patient/p1", 3), ("eli", "Patient/p2", 1)]
    assert subjects(patient="Patient/p2") == [("eli", "Patient/p2", 1)]
    assert subjects(task_id="t9") == [("dana", "Patient/p1", 2)]
    assert subjects(agent="eli", patient="Patient/p1") == [("eli", "Patient/p1", 3)]
    window = subjects(since=NOW + timedelta(seconds=1), until=NOW + timedelta(seconds=3))
    assert [s[2] for s in window] == [2, 1]
    assert subjects(agent="nobody") == []


def test_audit_pages_with_cursor(engine_store):
    """A cursor resumes below the last record of the page; the last page has no cursor."""
    ids = [engine_store.add_audit(audit(n, agent="eli" if n % 2 else "dana")) for n in range(5)]
    page, cursor = engine_store.list_audit(limit=2)
    assert [r.id for r in page] == [ids[4], ids[3]]
    page2, cursor2 = engine_store.list_audit(limit=2, cursor=cursor)
    assert [r.id for r in page2] == [ids[2], ids[1]]
    page3, cursor3 = engine_store.list_audit(limit=2, cursor=cursor2)
    assert ([r.id for r in page3], cursor3) == ([ids[0]], None)
    eli, more = engine_store.list_audit(AuditFilter(agent="eli"), limit=1)
    assert [r.id for r in eli] == [ids[3]]
    assert [r.id for r in engine_store.list_audit(AuditFilter(agent="eli"), cursor=more)[0]] == [
        ids[1]
    ]


def test_patient_reads_answer_what_the_single_reads_answer(engine_store):
    """`patient_reads` (Redis: one script) gives the Patient, the facts of a kind, the records
    sharing its trusted identifiers, its resources and its tasks, as the single reads do;
    None for a Patient not stored. SQLite has no combined read (None: read one by one)."""
    mrn, ssn = "urn:mrn", "urn:ssn"
    patient = resource("Patient", "p1") | {
        "identifier": [
            {"system": mrn, "value": "M1"},
            {"system": ssn, "value": "S1"},  # not trusted: not read ahead
            {"system": mrn},  # no value
        ]
    }
    engine_store.put_resource(SOURCE, patient, "p")
    engine_store.put_resource(
        "other-ehr",
        resource("Patient", "o9") | {"identifier": [{"system": mrn, "value": "M1"}]},
        "o",
    )
    engine_store.put_resource(SOURCE, resource("CarePlan", "c1"), "c1")
    engine_store.put_resource(SOURCE, resource("CarePlan", "c2", patient="p2"), "c2")
    engine_store.put_fact("patient-link", "a|b", {"same_person": True})
    engine_store.put_fact("other-kind", "x", {"n": 1})
    mine = engine_store.upsert_task(draft("a1", patient="Patient/p1"), NOW).task
    elsewhere = engine_store.upsert_task(
        draft("a2", patient="Patient/p1", source="other-ehr"), NOW
    ).task
    engine_store.upsert_task(draft("a3", patient="Patient/p2"), NOW)

    reads = engine_store.patient_reads(SOURCE, "p1", "patient-link", [mrn])
    if isinstance(engine_store, SqliteStore):
        assert reads is None
        return
    assert reads is not None
    assert reads.patient == engine_store.get_resource(SOURCE, "Patient", "p1")
    assert reads.facts == engine_store.list_facts("patient-link") == {"a|b": {"same_person": True}}
    assert reads.identifiers == {(mrn, "M1"): [(SOURCE, "p1"), ("other-ehr", "o9")]}
    assert reads.identifiers[(mrn, "M1")] == engine_store.patients_with_identifier(mrn, "M1")
    assert reads.resources == engine_store.resources_for_patient(SOURCE, "Patient/p1")
    assert [r.id for r in reads.resources] == ["c1", "p1"]
    assert reads.tasks == list(engine_store.iter_tasks(patient="Patient/p1"))
    assert {t.id for t in reads.tasks} == {mine.id, elsewhere.id}
    assert engine_store.patient_reads(SOURCE, "nobody", "patient-link", [mrn]) is None
    assert engine_store.patient_reads(SOURCE, "p1", "patient-link", []).identifiers == {}


def test_get_resources_reads_several_in_order(engine_store):
    """`get_resources` answers as `get_resource` for each key, in order, None when absent."""
    engine_store.put_resource(SOURCE, resource("Patient", "p1"), "p")
    engine_store.put_resource(SOURCE, resource("CarePlan", "c1"), "c1")
    keys = [(SOURCE, "CarePlan", "c1"), (SOURCE, "Patient", "nobody"), (SOURCE, "Patient", "p1")]
    assert engine_store.get_resources(keys) == [engine_store.get_resource(*k) for k in keys]
    assert [r.id if r else None for r in engine_store.get_resources(keys)] == ["c1", None, "p1"]
    assert engine_store.get_resources([]) == []
