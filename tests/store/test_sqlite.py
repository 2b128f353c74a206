"""Tests for fhir_bridge.store.sqlite: what only the embedded engine does (files, reopening).

The storage protocol itself is tested against every engine in test_conformance.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import TaskStatus
from tests.store.test_conformance import (
    PATIENT,
    SOURCE,
    claim_by,
    draft,
    mirror_change,
    seed_filters,
)
from tests.utils import NOW


@pytest.fixture
def db_path(tmp_path) -> Path:
    """Where the test's SQLite file lives (its folder does not exist yet)."""
    return tmp_path / "var" / "bridge.db"


def test_opening_creates_the_folder_and_file(db_path):
    """A store opened on a path in a missing folder creates both."""
    store = SqliteStore(db_path)
    try:
        assert db_path.is_file()
    finally:
        store.close()


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


def _task_indexes(store: SqliteStore) -> dict[str, str]:
    rows = store._db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'tasks'")
    return {name: sql for name, sql in rows if sql}


def test_the_assignee_index_holds_assigned_tasks_only(db_path):
    """Tasks are mostly made unassigned, so the index that lists an assignee's tasks is
    partial (a first load's inserts mostly skip it); an assignee's list is still read through
    it, and a file with the older full index gets the partial one when opened."""
    old = SqliteStore(db_path)
    old._db.execute("DROP INDEX tasks_assignee_set")
    old._db.execute(
        "CREATE INDEX tasks_assignee_order "
        "ON tasks (assignee, status, priority_rank DESC, due IS NULL, due, id)"
    )
    old.close()
    store = SqliteStore(db_path)
    try:
        indexes = _task_indexes(store)
        assert "tasks_assignee_order" not in indexes
        assert indexes["tasks_assignee_set"].endswith("WHERE assignee IS NOT NULL")
        ids = seed_filters(store)
        store.update_task(ids["k3"], claim_by("bob"))
        plan = " ".join(
            row[3]
            for row in store._db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE assignee = ? "
                "AND status IN ('in-progress', 'open') "
                "ORDER BY priority_rank DESC, due IS NULL, due, id",
                ("bob",),
            )
        )
        assert "tasks_assignee_set" in plan
        assert [t.focus_id for t in store.list_tasks(assignee="bob").items] == ["k3"]
    finally:
        store.close()
