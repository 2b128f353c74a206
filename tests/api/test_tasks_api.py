"""The task API: filters, cursors, ETag/If-Match, release, assign, comments, bulk assign and
queue deadline counts, on the sample data of one source."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from fhir_bridge.api import create_app
from fhir_bridge.runtime import Bridge
from fhir_bridge.store import RedisStore
from fhir_bridge.store.keys import Keys
from fhir_bridge.tasks.model import TaskStatus
from tests.api.sample import sample_bridge
from tests.logcapture import json_log_lines
from tests.store.conftest import REDIS_URL, delete_namespace
from tests.utils import NOW


def first_task(api: TestClient, queue: str = "scheduling") -> dict:
    """The first open task of a queue."""
    page = api.get(f"/queues/{queue}/tasks", params={"status": "open", "limit": 1}).json()
    return page["items"][0]


def ids(page: dict) -> list[str]:
    """The task ids of a listing page."""
    return [t["id"] for t in page["items"]]


# -- listing ---------------------------------------------------------------------------------


def test_list_filters_by_kind_label_and_patient(api: TestClient, bridge: Bridge):
    """kind, label and patient keep exactly the tasks the store holds with those values."""
    tasks = list(bridge.store.iter_tasks())
    kind = api.get("/tasks", params={"kind": "no-show-outreach", "limit": 500}).json()
    assert kind["total"] == sum(t.kind == "no-show-outreach" for t in tasks) > 0
    assert {t["kind"] for t in kind["items"]} == {"no-show-outreach"}
    label = api.get("/tasks", params={"label": "appointment:booked", "limit": 500}).json()
    assert set(ids(label)) == {t.id for t in tasks if "appointment:booked" in t.labels}
    patient = tasks[0].patient
    by_ref = api.get("/tasks", params={"patient": patient, "limit": 500}).json()
    by_id = api.get("/tasks", params={"patient": patient.split("/")[1], "limit": 500}).json()
    assert set(ids(by_ref)) == set(ids(by_id)) == {t.id for t in tasks if t.patient == patient}


def test_list_filters_by_status_assignee_and_queue(api: TestClient):
    """A claimed task is found by assignee and status, in its queue and across queues."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "dana"})
    mine = api.get("/tasks", params={"assignee": "dana", "status": "in-progress"}).json()
    assert ids(mine) == [task["id"]]
    both = api.get("/tasks", params=[("status", "open"), ("status", "in-progress")]).json()
    assert both["total"] == api.get("/tasks").json()["total"]
    assert api.get("/queues/insurance/tasks", params={"assignee": "dana"}).json()["total"] == 0
    scheduling = api.get("/tasks", params={"queue": "scheduling", "assignee": "dana"}).json()
    assert ids(scheduling) == [task["id"]]


def test_list_filters_by_due_range(api: TestClient, bridge: Bridge):
    """due_before / due_after bound the due date (a bound without zone is UTC)."""
    tasks = list(bridge.store.iter_tasks())
    overdue = api.get("/tasks", params={"due_before": NOW.isoformat(), "limit": 500}).json()
    assert set(ids(overdue)) == {t.id for t in tasks if t.due and t.due < NOW}
    assert overdue["total"] > 0
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=30)
    window = api.get(
        "/tasks",
        params={"due_after": "2026-11-27T12:00:00", "due_before": end.isoformat(), "limit": 500},
    ).json()
    assert set(ids(window)) == {t.id for t in tasks if t.due and start <= t.due < end}


def test_cursor_pages_cover_every_task_once_in_offset_order(api: TestClient):
    """Following next_cursor lists every task once, in the order offsets give."""
    by_offset = ids(api.get("/tasks", params={"limit": 500}).json())
    seen, params = [], {"limit": 40}
    while True:
        page = api.get("/tasks", params=params).json()
        assert page["total"] == len(by_offset)
        seen += ids(page)
        if page["next_cursor"] is None:
            break
        # offsets and cursors do not mix: only the first (cursor-less) page has next_offset
        assert page["next_offset"] == (40 if "cursor" not in params else None)
        params = {"limit": 40, "cursor": page["next_cursor"]}
    assert seen == by_offset and len(set(seen)) == len(by_offset) > 200


def test_cursor_survives_a_claim_between_pages(api: TestClient):
    """Claiming a task of the first page does not shift the open tasks of the next page."""
    everything = ids(api.get("/queues/insurance/tasks", params={"status": "open"}).json())
    first = api.get("/queues/insurance/tasks", params={"status": "open", "limit": 5}).json()
    api.post(f"/tasks/{first['items'][0]['id']}/claim", json={"coordinator": "eve"})
    rest = api.get(
        "/queues/insurance/tasks",
        params={"status": "open", "limit": 5, "cursor": first["next_cursor"]},
    ).json()
    assert ids(rest) == everything[5:10]


def test_bad_cursor_is_422(api: TestClient):
    """A cursor the API did not give out is refused, naming the parameter."""
    resp = api.get("/tasks", params={"cursor": "not-a-cursor"})
    assert resp.status_code == 422
    assert resp.json()["details"]["problems"][0]["where"] == "query.cursor"


# -- ETag and If-Match -----------------------------------------------------------------------


def test_task_etag_and_if_match(api: TestClient, bridge: Bridge):
    """GET gives W/"<version>"; a change with that ETag succeeds and returns the next one."""
    task = first_task(api)
    resp = api.get(f"/tasks/{task['id']}")
    assert resp.headers["ETag"] == f'W/"{task["version"]}"'
    claimed = api.post(
        f"/tasks/{task['id']}/claim",
        json={"coordinator": "alice"},
        headers={"If-Match": resp.headers["ETag"]},
    )
    assert claimed.status_code == 200
    assert claimed.headers["ETag"] == f'W/"{task["version"] + 1}"'
    assert bridge.store.get_task(task["id"]).status is TaskStatus.IN_PROGRESS


def test_stale_if_match_is_412_and_writes_nothing(api: TestClient, bridge: Bridge):
    """A stale If-Match is 412 with the current version, before the state machine is asked."""
    task = first_task(api)
    stale = {"If-Match": f'W/"{task["version"]}"'}
    api.post(f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "completed"})
    before = bridge.store.task_history(task["id"])
    resp = api.post(
        f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "open"}, headers=stale
    )
    assert resp.status_code == 412
    body = resp.json()
    assert body["error"] == "precondition_failed"
    assert body["details"] == {"current_version": task["version"] + 1, "etag": resp.headers["ETag"]}
    for route, extra in (("claim", {}), ("release", {}), ("assign", {"assignee": "b"})):
        again = api.post(
            f"/tasks/{task['id']}/{route}", json={"coordinator": "a", **extra}, headers=stale
        )
        assert again.status_code == 412, route
    comment = api.post(
        f"/tasks/{task['id']}/comments", json={"coordinator": "a", "text": "hi"}, headers=stale
    )
    assert comment.status_code == 412
    assert bridge.store.task_history(task["id"]) == before


def test_if_match_wins_over_the_body_version(api: TestClient):
    """A current If-Match lets a change through even with an old body version; the body
    version alone still gives 409 as before."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
    body = {"coordinator": "alice", "status": "completed", "version": task["version"]}
    assert api.post(f"/tasks/{task['id']}/status", json=body).status_code == 409
    current = api.get(f"/tasks/{task['id']}").headers["ETag"]
    ok = api.post(f"/tasks/{task['id']}/status", json=body, headers={"If-Match": current})
    assert ok.status_code == 200 and ok.json()["status"] == "completed"


def test_malformed_if_match_is_422(api: TestClient):
    """An If-Match that is not a version ETag is refused with 422."""
    task = first_task(api)
    resp = api.post(
        f"/tasks/{task['id']}/claim", json={"coordinator": "a"}, headers={"If-Match": "abc"}
    )
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request"


def test_if_match_on_unknown_task_is_404(api: TestClient):
    """If-Match on a task that does not exist is 404, not 412."""
    resp = api.post("/tasks/nope/claim", json={"coordinator": "a"}, headers={"If-Match": 'W/"1"'})
    assert resp.status_code == 404 and resp.json()["error"] == "task_not_found"


# -- release, assign, comments ---------------------------------------------------------------


def test_release_gives_the_task_back(api: TestClient, bridge: Bridge):
    """Only the holder releases; the task is open and unassigned; an open task cannot be."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
    other = api.post(f"/tasks/{task['id']}/release", json={"coordinator": "bob"})
    assert other.status_code == 409 and other.json()["error"] == "task_conflict"
    released = api.post(f"/tasks/{task['id']}/release", json={"coordinator": "alice"}).json()
    assert (released["status"], released["assignee"]) == ("open", None)
    again = api.post(f"/tasks/{task['id']}/release", json={"coordinator": "alice"})
    assert again.status_code == 409
    assert again.json()["details"] == {
        "current": "open",
        "allowed": ["cancelled", "completed", "in-progress"],
    }
    history = bridge.store.task_history(task["id"])
    assert [(e.action, e.to_status) for e in history[-2:]] == [
        ("claim", "in-progress"),
        ("release", "open"),
    ]


def test_assign_records_who_had_it(api: TestClient, bridge: Bridge):
    """Assign keeps the status, changes the assignee and records from and to in the history."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
    out = api.post(
        f"/tasks/{task['id']}/assign", json={"coordinator": "lead", "assignee": "carol"}
    ).json()
    assert (out["status"], out["assignee"]) == ("in-progress", "carol")
    event = bridge.store.task_history(task["id"])[-1]
    assert (event.actor, event.action) == ("lead", "assign")
    assert event.detail == {"from_assignee": "alice", "to_assignee": "carol"}
    mirror = bridge.store.list_outbox(task_id=task["id"])[-1]
    assert (mirror.action, mirror.payload["assignee"]) == ("task-mirror", "carol")


def test_assign_a_closed_task_is_409(api: TestClient):
    """A completed task cannot be assigned."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "completed"})
    resp = api.post(f"/tasks/{task['id']}/assign", json={"coordinator": "a", "assignee": "b"})
    assert resp.status_code == 409 and "completed" in resp.json()["message"]


def test_comments_are_history_events_and_never_logged(api: TestClient, bridge: Bridge):
    """A comment is 201, listed in the detail's comments and history, keeps the version, and
    its text appears in no log line."""
    task = first_task(api)
    text = "Spoke with daughter Maria Lopez, call back Tuesday"
    with json_log_lines() as logs:
        resp = api.post(
            f"/tasks/{task['id']}/comments", json={"coordinator": "alice", "text": text}
        )
    assert resp.status_code == 201
    assert resp.json()["text"] == text and resp.json()["author"] == "alice"
    assert "Maria" not in logs.text and logs.lines
    detail = api.get(f"/tasks/{task['id']}")
    assert [c["text"] for c in detail.json()["comments"]] == [text]
    assert detail.json()["history"][-1]["action"] == "comment"
    assert detail.headers["ETag"] == f'W/"{task["version"]}"'
    assert bridge.store.list_outbox(task_id=task["id"]) == []


def test_empty_comment_is_422(api: TestClient):
    """A comment needs text."""
    task = first_task(api)
    resp = api.post(f"/tasks/{task['id']}/comments", json={"coordinator": "a", "text": ""})
    assert resp.status_code == 422


# -- bulk ------------------------------------------------------------------------------------


def test_bulk_assign_reports_each_task(api: TestClient, bridge: Bridge):
    """Bulk assign assigns what it can and says why each other task was refused."""
    page = api.get("/queues/medications/tasks", params={"limit": 3}).json()
    good, closed = ids(page)[:2], ids(page)[2]
    api.post(f"/tasks/{closed}/status", json={"coordinator": "a", "status": "cancelled"})
    body = {"coordinator": "lead", "assignee": "frank", "ids": [*good, "nope", closed]}
    out = api.post("/tasks/bulk-assign", json=body).json()
    assert (out["succeeded"], out["failed"]) == (2, 2)
    assert [(r["id"], r["status_code"]) for r in out["results"]] == [
        (good[0], 200),
        (good[1], 200),
        ("nope", 404),
        (closed, 409),
    ]
    assert [r["error"] for r in out["results"][2:]] == ["task_not_found", "task_conflict"]
    assert {t.id for t in bridge.store.iter_tasks(assignee="frank")} == set(good)


def test_bulk_assign_needs_ids(api: TestClient):
    """An empty id list is 422."""
    body = {"coordinator": "lead", "assignee": "frank", "ids": []}
    assert api.post("/tasks/bulk-assign", json=body).status_code == 422


# -- queues ----------------------------------------------------------------------------------


def test_queues_count_overdue_and_due_today(api: TestClient, bridge: Bridge):
    """Each queue's overdue and due_today match its active tasks' due dates at NOW (UTC day)."""
    day_end = datetime(2026, 11, 27, tzinfo=UTC)
    task = first_task(api, "insurance")
    api.post(f"/tasks/{task['id']}/status", json={"coordinator": "a", "status": "completed"})
    active = [t for t in bridge.store.iter_tasks() if t.is_active]
    for queue in api.get("/queues").json():
        mine = [t for t in active if t.queue == queue["queue"] and t.due is not None]
        assert queue["overdue"] == sum(t.due < NOW for t in mine), queue["queue"]
        assert queue["due_today"] == sum(NOW <= t.due < day_end for t in mine), queue["queue"]
    insurance = next(q for q in api.get("/queues").json() if q["queue"] == "insurance")
    assert insurance["overdue"] > 0


def test_if_match_star_means_any_version(api: TestClient):
    """If-Match: * lets the change through whatever the version."""
    task = first_task(api)
    api.post(f"/tasks/{task['id']}/claim", json={"coordinator": "alice"})
    resp = api.post(
        f"/tasks/{task['id']}/release", json={"coordinator": "alice"}, headers={"If-Match": "*"}
    )
    assert resp.status_code == 200 and resp.json()["status"] == "open"


@pytest.mark.integration
def test_listing_on_redis_matches_sqlite(api: TestClient):
    """The same sample on the Redis engine lists the same tasks for filters and cursors."""
    prefix = f"test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    bridge = sample_bridge("ehr", store=RedisStore(REDIS_URL, key_prefix=prefix))
    try:
        on_redis = TestClient(create_app(bridge))
        queries = [
            {"limit": 500},
            {"kind": "verify-eligibility", "limit": 500},
            {"label": "appointment:noshow"},
            {"due_before": NOW.isoformat(), "queue": "insurance"},
            {"status": "open", "limit": 7},
        ]
        for params in queries:
            want, got = (
                api.get("/tasks", params=params).json(),
                on_redis.get("/tasks", params=params).json(),
            )
            assert (ids(got), got["total"]) == (ids(want), want["total"]), params
        # a cursor from one engine continues on the other: it names a place, not a row
        cursor = api.get("/tasks", params={"limit": 7}).json()["next_cursor"]
        got = on_redis.get("/tasks", params={"limit": 7, "cursor": cursor}).json()
        assert ids(got) == ids(api.get("/tasks", params={"limit": 7, "offset": 7}).json())
    finally:
        bridge.close()
        delete_namespace(client, Keys(prefix))
        client.close()


def test_task_answers_carry_description_and_labels(api):
    """What the rule wrote for the coordinator (description, labels) reaches the API."""
    item = api.get("/tasks", params={"kind": "confirm-appointment", "limit": 1}).json()["items"][0]
    assert item["description"].startswith("Status in the EHR:")
    assert any(label.startswith("appointment:") for label in item["labels"])
    detail = api.get(f"/tasks/{item['id']}").json()
    assert detail["task"]["description"] == item["description"]
