"""Tests for fhir_bridge.api.routes.outbox: list, show, retry and discard over HTTP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fhir_bridge.api.routes import outbox
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import OutboxStatus, TaskStatus
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW, make_draft


@pytest.fixture
def client():
    """The outbox router over a store with one conflict entry (1) and one pending entry (2)."""
    store = SqliteStore(":memory:")
    service = TaskService(store, lambda: NOW, ["ehr1"])
    task = store.upsert_task(make_draft(source="ehr1"), NOW).task
    service.claim(task.id, "alice")
    service.change_status(task.id, TaskStatus.COMPLETED, "alice")
    diff = {"fields": [{"path": "status", "ours": "booked", "theirs": "cancelled"}]}
    store.outbox_park(1, OutboxStatus.CONFLICT, "the EHR moved on", diff)
    app = FastAPI()
    app.state.bridge = SimpleNamespace(store=store, clock=lambda: NOW)
    app.include_router(outbox.router)
    with TestClient(app) as test_client:
        yield test_client
    store.close()


def test_list_by_status_shows_the_conflict_diff(client):
    """GET /outbox?status=conflict lists the conflict with its diff and without payload."""
    body = client.get("/outbox", params={"status": "conflict"}).json()
    assert [e["id"] for e in body] == [1]
    assert body[0]["detail"]["fields"][0]["theirs"] == "cancelled"
    assert "payload" not in body[0]
    assert len(client.get("/outbox").json()) == 2


def test_show_and_unknown_entry(client):
    """GET /outbox/{id} includes the payload; an unknown id is 404."""
    shown = client.get("/outbox/2").json()
    assert (shown["status"], shown["payload"]["status"]) == ("pending", "completed")
    assert client.get("/outbox/99").status_code == 404


def test_retry_requeues_and_refuses_pending(client):
    """POST retry turns the conflict entry pending again; retrying a pending one is 409."""
    retried = client.post("/outbox/1/retry")
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)
    assert client.post("/outbox/2/retry").status_code == 409


def test_discard_needs_a_reason_and_happens_once(client):
    """POST discard with a reason discards; a second discard is 409, no reason is 422."""
    assert client.post("/outbox/2/discard", json={}).status_code == 422
    done = client.post("/outbox/2/discard", json={"reason": "duplicate"})
    assert (done.status_code, done.json()["status"], done.json()["last_error"]) == (
        200,
        "discarded",
        "duplicate",
    )
    assert client.post("/outbox/2/discard", json={"reason": "again"}).status_code == 409
