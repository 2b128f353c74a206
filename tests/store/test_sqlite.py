"""Tests for fhir_bridge.store.sqlite: the storage protocol on the embedded SQLite engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from fhir_bridge.errors import TaskNotFound
from fhir_bridge.store.base import QuarantineEntry
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


@pytest.fixture
def db_path(tmp_path) -> Path:
    """Where the test's SQLite file lives (its folder does not exist yet)."""
    return tmp_path / "var" / "bridge.db"


@pytest.fixture
def store(db_path) -> Iterator[SqliteStore]:
    """A store in a fresh SQLite file (overrides the in-memory `store` of conftest.py)."""
    db = SqliteStore(db_path)
    yield db
    db.close()


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


# -- resources and durability ----------------------------------------------------------------


def test_put_resource_reports_whether_it_wrote(store):
    """put_resource: True when new, False for the same hash, True for a changed hash."""
    assert store.put_resource(SOURCE, PATIENT, "h1") is True
    assert store.put_resource(SOURCE, PATIENT, "h1") is False
    changed = {**PATIENT, "birthDate": "1970-01-02", "meta": {"versionId": "2"}}
    assert store.put_resource(SOURCE, changed, "h2") is True
    stored = store.get_resource(SOURCE, "Patient", "p1")
    assert (stored.content_hash, stored.version_id, stored.body) == ("h2", "2", changed)


def test_get_resource_fields_and_counts(store):
    """The stored resource keeps version, lastUpdated and body; counts are per type and source."""
    store.put_resource(SOURCE, PATIENT, "h1")
    store.put_resource("other-ehr", PATIENT, "h1")
    stored = store.get_resource(SOURCE, "Patient", "p1")
    assert stored.version_id == "1"
    assert stored.last_updated == "2026-11-26T10:00:00Z"
    assert stored.body == PATIENT
    assert store.get_resource(SOURCE, "Patient", "nope") is None
    assert store.resource_counts() == {"Patient": 2}
    assert store.resource_counts(SOURCE) == {"Patient": 1}


def test_data_survives_reopening_the_file(db_path):
    """Resources, cursors, tasks, history and outbox are still there after close and reopen."""
    first = SqliteStore(db_path)
    first.put_resource(SOURCE, PATIENT, "h1")
    first.set_cursor(SOURCE, "Patient", "2026-11-26T10:00:00Z")
    task = first.upsert_task(draft(), NOW).task
    first.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    first.close()

    second = SqliteStore(db_path)
    try:
        assert second.get_resource(SOURCE, "Patient", "p1").body == PATIENT
        assert second.get_cursor(SOURCE, "Patient") == "2026-11-26T10:00:00Z"
        assert second.get_task(task.id).status is TaskStatus.IN_PROGRESS
        assert len(second.task_history(task.id)) == 2
        assert [e.payload for e in second.list_outbox()] == [{"n": 1}]
    finally:
        second.close()


# -- cursors --------------------------------------------------------------------------------


def test_cursor_set_get_and_forget(store):
    """A cursor is None until set, reads back per source and type, and None forgets it."""
    assert store.get_cursor(SOURCE, "Patient") is None
    store.set_cursor(SOURCE, "Patient", "2026-11-26T10:00:00Z")
    store.set_cursor(SOURCE, "Patient", "2026-11-26T11:00:00Z")
    assert store.get_cursor(SOURCE, "Patient") == "2026-11-26T11:00:00Z"
    assert store.get_cursor(SOURCE, "Appointment") is None
    assert store.get_cursor("other-ehr", "Patient") is None
    store.set_cursor(SOURCE, "Patient", None)
    assert store.get_cursor(SOURCE, "Patient") is None


# -- quarantine -----------------------------------------------------------------------------


def test_quarantine_add_list_release(store):
    """Entries list newest first with total; the latest failure per resource wins; release drops."""
    store.add_quarantine(quarantine("a1", NOW))
    store.add_quarantine(quarantine("a2", NOW + timedelta(seconds=1)))
    store.add_quarantine(quarantine("a1", NOW + timedelta(seconds=2), version_id="4"))
    store.add_quarantine(quarantine("x", NOW, source="other-ehr"))
    entries, total = store.list_quarantine(SOURCE)
    assert total == 2
    assert [(e.resource_id, e.version_id) for e in entries] == [("a1", "4"), ("a2", "3")]
    assert entries[0].issues == quarantine("a1").issues
    assert entries[0].at == NOW + timedelta(seconds=2)
    assert store.list_quarantine()[1] == 3

    store.release_quarantine(SOURCE, "Appointment", "a1")
    entries, total = store.list_quarantine(SOURCE)
    assert (total, [e.resource_id for e in entries]) == (1, ["a2"])


def test_quarantine_limit_and_offset(store):
    """list_quarantine pages with limit and offset while total counts all."""
    for n in range(3):
        store.add_quarantine(quarantine(f"a{n}", NOW + timedelta(seconds=n)))
    entries, total = store.list_quarantine(limit=1, offset=1)
    assert (total, [e.resource_id for e in entries]) == (3, ["a1"])


def test_quarantine_without_id(store):
    """An entry without a resource id is kept and lists with resource_id None."""
    store.add_quarantine(quarantine(None, body={"value": 42}))
    store.add_quarantine(quarantine(None, NOW + timedelta(seconds=1), body={"value": 43}))
    entries, total = store.list_quarantine()
    assert total == 2
    assert [(e.resource_id, e.body) for e in entries] == [
        (None, {"value": 43}),
        (None, {"value": 42}),
    ]


def test_quarantine_without_id_at_the_same_instant_keeps_both(store):
    """Two id-less entries recorded at the same time are both kept ("none is lost")."""
    store.add_quarantine(quarantine(None, body={"value": 42}))
    store.add_quarantine(quarantine(None, body={"value": 43}))
    entries, total = store.list_quarantine()
    assert total == 2
    assert sorted(e.body["value"] for e in entries) == [42, 43]


# -- tasks ----------------------------------------------------------------------------------


def test_upsert_task_created_unchanged_updated(store):
    """upsert_task creates, then finds nothing to change, then refreshes a changed title."""
    created = store.upsert_task(draft(), NOW)
    assert (created.created, created.updated, created.task.version) == (True, False, 1)
    same = store.upsert_task(draft(), NOW + timedelta(hours=1))
    assert (same.created, same.updated, same.task) == (False, False, created.task)
    later = NOW + timedelta(hours=2)
    refreshed = store.upsert_task(draft(title="Reach out again", focus_version="2"), later)
    assert (refreshed.created, refreshed.updated) == (False, True)
    stored = store.get_task(created.task.id)
    assert (stored.title, stored.focus_version, stored.version) == ("Reach out again", "2", 2)
    assert (stored.created_at, stored.updated_at) == (NOW, later)
    assert [e.action for e in store.task_history(stored.id)] == ["created", "refreshed"]


def test_upsert_twice_never_duplicates(store):
    """The same identity upserted twice is one task."""
    store.upsert_task(draft(), NOW)
    store.upsert_task(draft(title="changed"), NOW)
    page = store.list_tasks()
    assert page.total == 1
    assert [t.title for t in page.items] == ["changed"]


def test_upsert_keeps_coordinator_state(store):
    """Refreshing a claimed task keeps its status and assignee."""
    task = store.upsert_task(draft(), NOW).task

    def claim(current: Task) -> TaskChange:
        """Assign the task to alice."""
        new = replace(current, status=TaskStatus.IN_PROGRESS, assignee="alice", version=2)
        return TaskChange(new, TaskEvent(current.id, NOW, "alice", "claim", "open", "in-progress"))

    store.update_task(task.id, claim)
    store.upsert_task(draft(title="changed"), NOW)
    stored = store.get_task(task.id)
    assert (stored.status, stored.assignee, stored.title) == (
        TaskStatus.IN_PROGRESS,
        "alice",
        "changed",
    )


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


def test_list_tasks_orders_by_priority_then_due(store):
    """stat > asap > urgent > routine, then due ascending with no due last."""
    seed_ordering(store)
    page = store.list_tasks()
    assert page.total == 6
    assert [t.focus_id for t in page.items] == [
        "stat",
        "asap",
        "urgent-early",
        "urgent-late",
        "urgent-none",
        "routine",
    ]


def test_list_tasks_filters_and_pages(store):
    """Status, queue and rule filters narrow the listing; total counts all matches."""
    ids = seed_ordering(store)
    for focus in ("asap", "urgent-late"):
        store.update_task(ids[focus], mirror_change(TaskStatus.COMPLETED, NOW))
    open_page = store.list_tasks(statuses=[TaskStatus.OPEN], limit=2, offset=1)
    assert open_page.total == 4
    assert [t.focus_id for t in open_page.items] == ["urgent-early", "urgent-none"]
    done = store.list_tasks(statuses=[TaskStatus.COMPLETED, TaskStatus.CANCELLED])
    assert [t.focus_id for t in done.items] == ["asap", "urgent-late"]
    assert store.list_tasks(queue="insurance").total == 0
    assert store.list_tasks(rule_id="no-show-outreach").total == 6
    assert len(list(store.iter_tasks(queue="scheduling"))) == 6


def test_queue_counts(store):
    """queue_counts gives per queue the number of tasks in each status."""
    ids = seed_ordering(store)
    store.upsert_task(draft("cer", queue="insurance", rule_id="prior-authorization"), NOW)
    store.update_task(ids["stat"], mirror_change(TaskStatus.IN_PROGRESS, NOW))
    assert store.queue_counts() == {
        "scheduling": {"open": 5, "in-progress": 1},
        "insurance": {"open": 1},
    }


def test_update_task_unknown_id(store):
    """update_task on a missing id raises TaskNotFound."""
    with pytest.raises(TaskNotFound):
        store.update_task("0" * 20, mirror_change(TaskStatus.COMPLETED, NOW))


def test_update_task_failing_change_writes_nothing(store):
    """A change function that raises leaves task, history and outbox untouched."""
    task = store.upsert_task(draft(), NOW).task

    def change(current: Task) -> TaskChange:
        """Refuse, as a state machine would."""
        raise RuntimeError("state machine says no")

    with pytest.raises(RuntimeError):
        store.update_task(task.id, change)
    assert store.get_task(task.id) == task
    assert len(store.task_history(task.id)) == 1
    assert store.list_outbox() == []


def test_update_task_is_all_or_nothing(store):
    """When writing the outbox fails after task and event were written, all is rolled back."""
    task = store.upsert_task(draft(), NOW).task
    unserialisable = {"at": object()}
    with pytest.raises(TypeError):
        store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, unserialisable))
    assert store.get_task(task.id) == task
    assert len(store.task_history(task.id)) == 1
    assert store.list_outbox() == []


def test_set_task_mirror(store):
    """set_task_mirror records the mirror's id and version on the task."""
    task = store.upsert_task(draft(), NOW).task
    store.set_task_mirror(task.id, "Task/99", "3")
    stored = store.get_task(task.id)
    assert (stored.mirror_id, stored.mirror_version) == ("Task/99", "3")


# -- outbox ---------------------------------------------------------------------------------


def test_due_outbox_returns_oldest_pending_per_task(store):
    """Only the oldest pending entry of each task is due, so a task's writes go in order."""
    a = store.upsert_task(draft("a"), NOW).task
    b = store.upsert_task(draft("b"), NOW).task
    store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "a1"}))
    store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "b1"}))
    store.update_task(a.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": "a2"}))
    due = store.due_outbox(NOW)
    assert [e.payload["n"] for e in due] == ["a1", "b1"]

    store.outbox_delivered(due[0].id, NOW)
    assert [e.payload["n"] for e in store.due_outbox(NOW)] == ["b1", "a2"]


def test_due_outbox_respects_next_attempt_at(store):
    """An entry is not due before next_attempt_at; a later entry of its task waits too."""
    task = store.upsert_task(draft(), NOW).task
    store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": 1}))
    store.update_task(task.id, mirror_change(TaskStatus.COMPLETED, NOW, {"n": 2}))
    assert store.due_outbox(NOW - timedelta(seconds=1)) == []
    (first,) = store.due_outbox(NOW)
    retry_at = NOW + timedelta(minutes=1)
    store.outbox_retry(first.id, "503 from server", retry_at)
    assert store.due_outbox(NOW + timedelta(seconds=59)) == []
    assert [e.id for e in store.due_outbox(retry_at)] == [first.id]


def test_due_outbox_limit(store):
    """due_outbox returns at most `limit` entries, oldest first."""
    for n in range(3):
        task = store.upsert_task(draft(f"t{n}"), NOW).task
        store.update_task(task.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": n}))
    assert [e.payload["n"] for e in store.due_outbox(NOW, limit=2)] == [0, 1]


def test_outbox_retry_delivered_dead_bookkeeping(store):
    """retry counts an attempt and keeps pending; delivered and dead set status and attempts."""
    a = store.upsert_task(draft("a"), NOW).task
    b = store.upsert_task(draft("b"), NOW).task
    store.update_task(a.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "a"}))
    store.update_task(b.id, mirror_change(TaskStatus.IN_PROGRESS, NOW, {"n": "b"}))
    entry_a, entry_b = store.list_outbox()
    assert (entry_a.status, entry_a.attempts, entry_a.last_error) == (
        OutboxStatus.PENDING,
        0,
        None,
    )
    assert entry_a.next_attempt_at == entry_a.created_at == NOW

    later = NOW + timedelta(seconds=30)
    store.outbox_retry(entry_a.id, "timeout", later)
    (retried,) = store.list_outbox(task_id=a.id)
    assert (retried.status, retried.attempts, retried.last_error) == (
        OutboxStatus.PENDING,
        1,
        "timeout",
    )
    assert retried.next_attempt_at == later

    store.outbox_delivered(entry_a.id, later)
    (delivered,) = store.list_outbox(status=OutboxStatus.DELIVERED)
    assert (delivered.id, delivered.attempts, delivered.last_error) == (entry_a.id, 2, None)
    assert delivered.delivered_at == later

    store.outbox_dead(entry_b.id, "422 unprocessable")
    (dead,) = store.list_outbox(status=OutboxStatus.DEAD)
    assert (dead.id, dead.attempts, dead.last_error) == (entry_b.id, 1, "422 unprocessable")
    assert store.list_outbox(status=OutboxStatus.PENDING) == []
    assert store.due_outbox(later + timedelta(days=1)) == []
