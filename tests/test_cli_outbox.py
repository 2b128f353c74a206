"""Tests for fhir_bridge.cli_outbox: `outbox list|show|retry|discard` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_bridge.cli_outbox import outbox_app
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW, make_draft, settings_file

runner = CliRunner()


@pytest.fixture
def config(tmp_path) -> Path:
    """A settings file with a store holding one dead and one pending outbox entry."""
    path = settings_file(tmp_path)
    store = SqliteStore(tmp_path / "b.db")
    try:
        service = TaskService(store, lambda: NOW, ["ehr1"])
        task = store.upsert_task(make_draft(source="ehr1"), NOW).task
        service.claim(task.id, "alice")
        service.change_status(task.id, TaskStatus.COMPLETED, "alice", note="secret note")
        first, _ = store.list_outbox()
        detail = {"status": 422, "outcome": {"resourceType": "OperationOutcome", "issue": []}}
        store.outbox_park(first.id, OutboxStatus.DEAD, "HTTP 422", detail)
    finally:
        store.close()
    return path


def _status(config: Path, entry_id: int) -> OutboxStatus:
    store = SqliteStore(config.parent / "b.db")
    try:
        return store.get_outbox(entry_id).status
    finally:
        store.close()


def test_list_filters_by_status(config):
    """`list --status dead --json` prints only the dead entry, without its payload."""
    result = runner.invoke(outbox_app, ["list", "-c", str(config), "--status", "dead", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)  # one entry: one JSON document
    assert (listed["id"], listed["status"], listed["detail"]["status"]) == (1, "dead", 422)
    assert "payload" not in listed
    assert "secret note" not in result.output


def test_list_table_shows_every_entry(config):
    """`list` prints a table row per entry with its status."""
    result = runner.invoke(outbox_app, ["list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "dead" in result.output and "pending" in result.output


def test_show_prints_payload_and_detail(config):
    """`show ID` prints the entry with its payload and its OperationOutcome detail."""
    result = runner.invoke(outbox_app, ["show", "1", "-c", str(config)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["status"], shown["detail"]["status"]) == ("dead", 422)
    assert shown["payload"]["status"] == "in-progress"


def test_retry_requeues_a_dead_entry_and_refuses_a_pending_one(config):
    """`retry` puts the dead entry back to pending (exit 0) and refuses a pending one (exit 1)."""
    result = runner.invoke(outbox_app, ["retry", "1", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert _status(config, 1) is OutboxStatus.PENDING
    refused = runner.invoke(outbox_app, ["retry", "2", "-c", str(config)])
    assert refused.exit_code == 1
    assert "only dead or conflict" in refused.output


def test_discard_and_unknown_entry(config):
    """`discard` marks an entry discarded with the reason; an unknown id exits 1."""
    result = runner.invoke(outbox_app, ["discard", "2", "--reason", "duplicate", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert _status(config, 2) is OutboxStatus.DISCARDED
    missing = runner.invoke(outbox_app, ["show", "99", "-c", str(config)])
    assert missing.exit_code == 1
    assert "no outbox entry 99" in missing.output
