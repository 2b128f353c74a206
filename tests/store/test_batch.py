"""The batch methods ingest uses per page (put_resources, resource_hashes, get_tasks,
release_quarantines), on every engine: each must do exactly what its one-at-a-time
counterpart does, in order, duplicates and all."""

from __future__ import annotations

import json
from datetime import datetime

from fhir_bridge.store.base import QuarantineEntry
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.tasks.model import Priority
from tests.utils import NOW, make_draft

SOURCE = "main-ehr"


def appointment(rid: str, status: str = "booked", version: str = "1") -> dict:
    """An Appointment of Patient/p1 at `version`."""
    return {
        "resourceType": "Appointment",
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": f"2026-11-26T10:00:0{version}Z"},
        "status": status,
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }


def test_put_resources_writes_like_put_resource(engine_store):
    """Each item is written unless its hash is the stored one, or an earlier item's."""
    store = engine_store
    store.put_resource(SOURCE, appointment("a1"), "h1")
    items = [
        (appointment("a1"), "h1"),  # unchanged
        (appointment("a2"), "h2"),  # new
        (appointment("a3", version="1"), "h3"),  # new
        (appointment("a3", "cancelled", version="2"), "h3b"),  # changed within the batch
        (appointment("a2"), "h2"),  # the same as the batch's earlier copy
    ]
    assert store.put_resources(SOURCE, items) == [False, True, True, True, False]
    a3 = store.get_resource(SOURCE, "Appointment", "a3")
    assert a3 is not None
    assert (a3.content_hash, a3.version_id, a3.body["status"]) == ("h3b", "2", "cancelled")
    assert [r.id for r in store.resources_for_patient(SOURCE, "Patient/p1")] == [
        "a1",
        "a2",
        "a3",
    ]
    assert store.put_resources(SOURCE, []) == []


def test_resource_hashes_of_stored_ids_only(engine_store):
    """Hashes come back by id for stored resources of that type and source only."""
    store = engine_store
    store.put_resources(SOURCE, [(appointment("a1"), "h1"), (appointment("a2"), "h2")])
    store.put_resource("other-ehr", appointment("a3"), "h3")
    assert store.resource_hashes(SOURCE, "Appointment", ["a2", "a1", "a3", "a2"]) == {
        "a1": "h1",
        "a2": "h2",
    }
    assert store.resource_hashes(SOURCE, "Patient", ["a1"]) == {}
    assert store.resource_hashes(SOURCE, "Appointment", []) == {}


def test_get_tasks_returns_existing_tasks_by_id(engine_store):
    """Only tasks that exist are returned, each equal to what get_task returns."""
    store = engine_store
    made = [
        store.upsert_task(make_draft(source=SOURCE, focus_id=f"a{i}"), NOW).task for i in (1, 2)
    ]
    found = store.get_tasks([made[1].id, "0" * 20, made[0].id, made[1].id])
    assert found == {t.id: store.get_task(t.id) for t in made}
    assert found[made[0].id].priority is Priority.URGENT
    assert store.get_tasks([]) == {}


def test_get_tasks_reads_past_one_chunk(tmp_path):
    """SQLite splits long id lists (bound-parameter limits) and still finds every task."""
    store = SqliteStore(tmp_path / "b.db")
    try:
        ids = [store.upsert_task(make_draft(focus_id=f"a{i}"), NOW).task.id for i in range(1203)]
        assert set(store.get_tasks(["f" * 20, *ids])) == set(ids)
        rows = [(appointment(f"a{i}"), f"h{i}") for i in range(1203)]
        assert all(store.put_resources(SOURCE, rows))
        assert (
            len(store.resource_hashes(SOURCE, "Appointment", [f"a{i}" for i in range(1203)]))
            == 1203
        )
    finally:
        store.close()


def test_release_quarantines_forgets_the_listed_entries(engine_store):
    """Listed (type, id) entries of the source go; others stay."""
    store = engine_store
    for rid in ("a1", "a2", "a3"):
        store.add_quarantine(
            QuarantineEntry(
                source=SOURCE,
                resource_type="Appointment",
                resource_id=rid,
                version_id="1",
                issues=[
                    {"severity": "error", "code": "value", "expression": "x", "diagnostics": "d"}
                ],
                body=appointment(rid),
                at=datetime(2026, 11, 26, tzinfo=NOW.tzinfo),
            )
        )
    store.release_quarantines(
        SOURCE, [("Appointment", "a1"), ("Appointment", "a3"), ("Patient", "a2")]
    )
    entries, total = store.list_quarantine(SOURCE)
    assert total == 1 and [e.resource_id for e in entries] == ["a2"]
    store.release_quarantines(SOURCE, [])
    assert store.list_quarantine(SOURCE)[1] == 1


def test_stored_bodies_round_trip_exactly(tmp_path):
    """What SQLite stores (orjson) reads back equal to what went in, big integers included."""
    store = SqliteStore(tmp_path / "b.db")
    try:
        odd = appointment("a1") | {
            "minutesDuration": 2**70,  # beyond 64 bits: orjson refuses, json writes it
            "comment": 'line\nbreak \u2028 "quoted" caf\u00e9 1234567890123456789012',
            "priority": 0,
        }
        plain = appointment("a2") | {"comment": "short"}
        store.put_resources(SOURCE, [(odd, "h1"), (plain, "h2")])
        for resource in (odd, plain):
            got = store.get_resource(SOURCE, "Appointment", resource["id"])
            assert got is not None and got.body == resource
            assert json.dumps(got.body, sort_keys=True) == json.dumps(resource, sort_keys=True)
    finally:
        store.close()


def test_upsert_tasks_equals_upsert_task_one_by_one(engine_store, tmp_path):
    """A batch of new tasks, then one mixing a refresh, an unchanged task and a repeat, leave
    the tasks and histories one-at-a-time upserts leave."""
    store = engine_store
    reference = SqliteStore(tmp_path / "reference.db")
    try:
        first = [make_draft(source=SOURCE, focus_id=f"a{i}") for i in range(3)]
        second = [
            make_draft(source=SOURCE, focus_id="a0", title="Moved"),  # refresh
            make_draft(source=SOURCE, focus_id="a1"),  # unchanged
            make_draft(source=SOURCE, focus_id="a9"),  # new
            make_draft(source=SOURCE, focus_id="a9", title="Again"),  # repeat: refresh
        ]
        for batch in (first, second):
            got = store.upsert_tasks(batch, NOW)
            want = [reference.upsert_task(d, NOW) for d in batch]
            assert [(o.created, o.updated, o.task) for o in got] == [
                (o.created, o.updated, o.task) for o in want
            ]
        assert [(o.created, o.updated) for o in store.upsert_tasks(second[:0], NOW)] == []
        for task in reference.list_tasks(limit=100).items:
            assert store.get_task(task.id) == task
            assert [(e.action, e.to_status, e.detail) for e in store.task_history(task.id)] == [
                (e.action, e.to_status, e.detail) for e in reference.task_history(task.id)
            ]
        assert store.list_tasks(limit=100).total == 4
    finally:
        reference.close()
