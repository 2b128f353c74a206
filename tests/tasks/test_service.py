"""Tests for fhir_bridge.tasks.service: coordinator actions with history and outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fhir_bridge.errors import IllegalTransition, TaskConflict, TaskNotFound
from fhir_bridge.tasks.model import (
    MIRROR_ACTION,
    OutboxStatus,
    Task,
    TaskStatus,
)
from fhir_bridge.tasks.service import TaskService, snapshot
from tests.utils import NOW, make_draft

LATER = NOW + timedelta(minutes=5)
SOURCE = "main-ehr"


@pytest.fixture
def service(store) -> TaskService:
    """A service with a fixed clock that writes back to SOURCE only."""
    return TaskService(store, clock=lambda: LATER, writeback_sources=[SOURCE])


@pytest.fixture
def task(store) -> Task:
    """An open task of SOURCE."""
    return store.upsert_task(make_draft(source=SOURCE), NOW).task


def test_claim_assigns_and_records(service, store, task):
    """Claiming makes the task in-progress and assigned, with one event and one outbox entry."""
    claimed = service.claim(task.id, "alice")
    assert (claimed.status, claimed.assignee, claimed.version) == (
        TaskStatus.IN_PROGRESS,
        "alice",
        2,
    )
    assert claimed.updated_at == LATER
    assert store.get_task(task.id) == claimed
    events = store.task_history(task.id)
    assert [(e.action, e.actor, e.from_status, e.to_status) for e in events] == [
        ("created", "bridge", None, "open"),
        ("claim", "alice", "open", "in-progress"),
    ]
    (entry,) = store.list_outbox()
    assert (entry.task_id, entry.source, entry.action, entry.status) == (
        task.id,
        SOURCE,
        MIRROR_ACTION,
        OutboxStatus.PENDING,
    )
    assert entry.payload["status"] == "in-progress"
    assert entry.payload["assignee"] == "alice"
    assert entry.payload == snapshot(claimed) | {"note": None}


def test_claim_by_second_coordinator_conflicts(service, store, task):
    """A task claimed by alice cannot be claimed by bob; nothing more is written."""
    service.claim(task.id, "alice")
    with pytest.raises(TaskConflict, match="another coordinator"):
        service.claim(task.id, "bob")
    assert store.get_task(task.id).assignee == "alice"
    assert len(store.task_history(task.id)) == 2
    assert len(store.list_outbox()) == 1


def test_claim_twice_by_same_coordinator_conflicts(service, task):
    """Claiming one's own task again is a conflict, not a silent no-op."""
    service.claim(task.id, "alice")
    with pytest.raises(TaskConflict, match="already claimed by you"):
        service.claim(task.id, "alice")


def test_complete_queues_a_write_back(service, store, task):
    """Completing a claimed task queues a second outbox entry whose payload is completed."""
    service.claim(task.id, "alice")
    done = service.change_status(task.id, TaskStatus.COMPLETED, "alice", note="rebooked")
    assert (done.status, done.assignee, done.version) == (TaskStatus.COMPLETED, "alice", 3)
    entries = store.list_outbox(task_id=task.id)
    assert [e.payload["status"] for e in entries] == ["in-progress", "completed"]
    assert entries[-1].payload["note"] == "rebooked"
    assert store.task_history(task.id)[-1].detail == {"note": "rebooked"}


def test_release_to_open_clears_the_assignee(service, task):
    """Moving an in-progress task back to open unassigns it."""
    service.claim(task.id, "alice")
    released = service.change_status(task.id, TaskStatus.OPEN, "alice")
    assert (released.status, released.assignee) == (TaskStatus.OPEN, None)


def test_illegal_transition_writes_nothing(service, store, task):
    """completed -> open raises IllegalTransition (listing none) and writes no event or outbox."""
    service.change_status(task.id, TaskStatus.COMPLETED, "alice")
    before = (store.get_task(task.id), store.task_history(task.id), store.list_outbox())
    with pytest.raises(IllegalTransition) as info:
        service.change_status(task.id, TaskStatus.OPEN, "alice")
    assert info.value.allowed == []
    assert (store.get_task(task.id), store.task_history(task.id), store.list_outbox()) == before


def test_claim_of_completed_task_is_illegal(service, task):
    """A completed task cannot be claimed."""
    service.change_status(task.id, TaskStatus.COMPLETED, "alice")
    with pytest.raises(IllegalTransition):
        service.claim(task.id, "bob")


def test_expected_version_mismatch_conflicts(service, store, task):
    """A stale expected_version is a TaskConflict and nothing is written."""
    with pytest.raises(TaskConflict, match="version 1, not 7"):
        service.change_status(task.id, TaskStatus.CANCELLED, "alice", expected_version=7)
    with pytest.raises(TaskConflict):
        service.claim(task.id, "alice", expected_version=0)
    assert store.get_task(task.id) == task
    assert store.list_outbox() == []
    assert len(store.task_history(task.id)) == 1


def test_expected_version_match_succeeds(service, task):
    """The current version as expected_version lets the change through."""
    assert service.claim(task.id, "alice", expected_version=task.version).version == 2


def test_source_without_writeback_gets_no_outbox(service, store):
    """A task of a source not in writeback_sources changes locally only."""
    local = store.upsert_task(make_draft(source="read-only-ehr"), NOW).task
    claimed = service.claim(local.id, "alice")
    assert claimed.status is TaskStatus.IN_PROGRESS
    assert len(store.task_history(local.id)) == 2
    assert store.list_outbox() == []


def test_unknown_task_is_not_found(service):
    """Acting on a task id that does not exist raises TaskNotFound."""
    with pytest.raises(TaskNotFound):
        service.claim("0" * 20, "alice")
