"""The coordinator API on a store filled from the sample data (no FHIR server needed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.config import Settings, SourceConfig
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.tasks.model import OutboxStatus
from tests.expected import expected_active_tasks
from tests.utils import NOW, ROOT, sample

QUEUES = {"scheduling", "follow-up", "medications", "insurance", "records", "family"}


def expected_open(bridge: Bridge) -> dict[str, int]:
    """Per queue, the open tasks tests/expected.py predicts after the initial load at NOW."""
    per_queue = dict.fromkeys(QUEUES, 0)
    for rule_id, n in expected_active_tasks(NOW).items():
        per_queue[bridge.rules.get(rule_id).rule.task.queue] += n
    return per_queue


@pytest.fixture
def bridge() -> Bridge:
    """A bridge whose store holds the whole sample, loaded as a first sync would at NOW."""
    source = SourceConfig(name="ehr", base_url="http://127.0.0.1:9/fhir")
    settings = Settings(
        auth={"enabled": False},  # not about access control
        sources=(source,),
        mappings_dir=ROOT / "mappings",
        profiles_dir=ROOT / "profiles",
    )
    b = Bridge(settings, store=SqliteStore(":memory:"), clock=lambda: NOW)
    for rtype in dependency_order(source.resource_types, b.rules):
        b.ingestor.ingest("ehr", sample(rtype), rtype, initial=True)
    yield b
    b.close()


@pytest.fixture
def api(bridge: Bridge) -> TestClient:
    """A test client for the bridge's app."""
    return TestClient(create_app(bridge))


def first_task(api: TestClient, queue: str = "scheduling") -> dict:
    """The first open task of a queue."""
    page = api.get(f"/queues/{queue}/tasks", params={"status": "open", "limit": 1}).json()
    return page["items"][0]


def test_queues_list_counts_by_status(api: TestClient, bridge: Bridge):
    """GET /queues gives the six queues, counts equal to the store's and to tests/expected.py."""
    body = api.get("/queues").json()
    by_name = {q["queue"]: q for q in body}
    assert set(by_name) == QUEUES
    store_counts = bridge.store.queue_counts()
    assert set(store_counts) == QUEUES
    for name, counts in store_counts.items():
        assert by_name[name]["counts"]["open"] == counts["open"]
        assert by_name[name]["total"] == sum(counts.values())
        assert by_name[name]["tasks_url"] == f"/queues/{name}/tasks"
    assert {name: q["counts"]["open"] for name, q in by_name.items()} == expected_open(bridge)


def test_queue_tasks_are_paginated_and_ordered(api: TestClient, bridge: Bridge):
    """Pages of a queue do not overlap, cover the total, and come highest priority first."""
    total = expected_open(bridge)["insurance"]
    assert 10 < total <= 60
    first = api.get("/queues/insurance/tasks", params={"limit": 10}).json()
    assert first["total"] == total and len(first["items"]) == 10 and first["next_offset"] == 10
    rest = api.get("/queues/insurance/tasks", params={"limit": 50, "offset": 10}).json()
    ids = [t["id"] for t in first["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == total
    assert rest["next_offset"] is None
    ranks = {"stat": 3, "asap": 2, "urgent": 1, "routine": 0}
    priorities = [ranks[t["priority"]] for t in first["items"] + rest["items"]]
    assert priorities == sorted(priorities, reverse=True)


def test_status_filter(api: TestClient):
    """?status= keeps only tasks in that status."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "bob"})
    body = api.get("/queues/scheduling/tasks", params={"status": "in-progress"}).json()
    assert [t["id"] for t in body["items"]] == [task["id"]]
    open_ = api.get("/queues/scheduling/tasks", params={"status": "open"}).json()
    assert task["id"] not in {t["id"] for t in open_["items"]}


def test_task_detail_has_focus_resource_and_history(api: TestClient):
    """GET /tasks/{id} shows the focus resource as stored and the creation event."""
    task = first_task(api)
    detail = api.get(f"/tasks/{task['id']}").json()
    assert detail["focus_resource"]["resourceType"] == "Appointment"
    assert f"Appointment/{detail['focus_resource']['id']}" == task["focus"]
    assert [e["action"] for e in detail["history"]] == ["created"]
    assert detail["writeback"] == []


def test_claim_then_complete_records_history_and_outbox(api: TestClient, bridge: Bridge):
    """Claim and complete: statuses move, history grows, one outbox entry per change."""
    task = first_task(api)
    claimed = api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"}).json()
    assert claimed["status"] == "in-progress" and claimed["assignee"] == "alice"
    done = api.post(
        f"/tasks/{task['id']}/status", json={"coordinator": "alice", "status": "completed"}
    ).json()
    assert done["status"] == "completed" and done["allowed_transitions"] == []
    detail = api.get(f"/tasks/{task['id']}").json()
    assert [e["to_status"] for e in detail["history"]] == ["open", "in-progress", "completed"]
    entries = bridge.store.list_outbox(task_id=task["id"])
    # the mirror per change, then the rule's on_status actions for 'completed'
    assert [(e.action, e.payload["status"]) for e in entries][:2] == [
        ("task-mirror", "in-progress"),
        ("task-mirror", "completed"),
    ]
    assert all(e.action != "task-mirror" for e in entries[2:])
    assert all(e.status is OutboxStatus.PENDING for e in entries)


def test_illegal_transition_is_409_with_allowed_list(api: TestClient):
    """Reopening a completed task is refused with 409 and the (empty) list of allowed moves."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "completed"})
    resp = api.post(f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "open"})
    assert resp.status_code == 409
    body = resp.json()
    assert body["error"] == "illegal_transition"
    assert body["details"] == {"current": "completed", "allowed": []}
    assert "completed" in body["message"]


def test_claim_by_another_coordinator_is_409(api: TestClient):
    """A task claimed by alice cannot be claimed by bob."""
    task = first_task(api)
    assert api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"}).status_code == 200
    resp = api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "bob"})
    assert resp.status_code == 409 and resp.json()["error"] == "task_conflict"


def test_stale_version_is_409(api: TestClient):
    """A change carrying an old task version is refused (optimistic concurrency)."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
    resp = api.post(
        f"/tasks/{task['id']}/status",
        json={"coordinator": "alice", "status": "completed", "version": task["version"]},
    )
    assert resp.status_code == 409 and "changed since you read it" in resp.json()["message"]


def test_unknown_task_is_404(api: TestClient):
    """Reading or changing a task that does not exist gives 404 with a reason."""
    assert api.get("/tasks/nope").status_code == 404
    resp = api.post("/tasks/nope/claim", json={"coordinator": "alice"})
    assert resp.status_code == 404 and resp.json()["error"] == "task_not_found"


def test_unknown_queue_is_404(api: TestClient):
    """A queue no rule fills is 404, naming where to look."""
    resp = api.get("/queues/nonsense/tasks")
    assert resp.status_code == 404 and "GET /queues" in resp.json()["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"coordinator": "alice", "status": "done"}, "body.status"),
        ({"status": "completed"}, "body.coordinator"),
        ({"coordinator": "alice", "status": "completed", "extra": 1}, "body.extra"),
        ({"coordinator": "a b", "status": "completed"}, "body.coordinator"),
    ],
)
def test_bad_request_bodies_are_422_and_say_where(api: TestClient, body: dict, where: str):
    """A malformed body gets 422 naming the field and the problem."""
    task = first_task(api)
    resp = api.post(f"/tasks/{task['id']}/status", json=body)
    assert resp.status_code == 422
    payload = resp.json()
    assert payload["error"] == "invalid_request"
    assert where in [p["where"] for p in payload["details"]["problems"]]


def test_bad_query_parameters_are_422(api: TestClient):
    """limit out of range and unknown status values are refused with 422."""
    assert api.get("/queues/scheduling/tasks", params={"limit": 0}).status_code == 422
    assert api.get("/queues/scheduling/tasks", params={"status": "bogus"}).status_code == 422


def test_validation_errors_do_not_echo_the_note(api: TestClient):
    """A rejected note (too long) is not echoed back in the error body."""
    task = first_task(api)
    note = "Patient Jane Roe " * 200
    body = {"coordinator": "a", "status": "completed", "note": note}
    resp = api.post(f"/tasks/{task['id']}/status", json=body)
    assert resp.status_code == 422
    assert "Jane Roe" not in resp.text


def test_openapi_docs_are_served(api: TestClient):
    """The OpenAPI schema lists the task routes."""
    schema = api.get("/openapi.json").json()
    assert "/tasks/{task_id}/status" in schema["paths"]
    assert api.get("/docs").status_code == 200
