"""Tests for fhir_bridge.store.sqlite: what only the embedded engine does (files, reopening).

The storage protocol itself is tested against every engine in test_conformance.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import TaskStatus
from tests.store.test_conformance import PATIENT, SOURCE, draft, mirror_change
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
