"""The batch methods ingest uses per page (put_resources, resource_hashes, get_tasks,
release_quarantines, upsert_tasks, rules_with_tasks), on every engine: each must do exactly
what its one-at-a-time counterpart does, in order, duplicates and all, and concurrent pages of
the same tasks must lose no update."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store.base import QuarantineEntry
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.model import Priority, TaskChange, TaskEvent, TaskStatus, task_id
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.canonical import content_hash
from tests.store.test_conformance import run_together
from tests.utils import NOW, ROOT, make_draft, sample

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
        histories = store.task_histories(ids)
        assert len(histories) == 1203 and all(len(h) == 1 for h in histories.values())
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


# -- upsert_tasks: a page of tasks ----------------------------------------------------------


def page_of_drafts(count: int, start: int = 0, **changes) -> list:
    """`count` drafts on Appointments a<start>.. spread over three queues and two rules."""
    queues = ["scheduling", "follow-up", "records"]
    return [
        make_draft(
            source=SOURCE,
            focus_id=f"a{i}",
            rule_id=f"rule-{i % 2}",
            queue=queues[i % 3],
            patient=f"Patient/p{i // 4}",
            **changes,
        )
        for i in range(start, start + count)
    ]


def test_upsert_tasks_creates_a_page_of_new_tasks(engine_store):
    """A page of new drafts makes one task each at version 1, with its "created" event, listed
    in its queue's and rule's indexes."""
    store = engine_store
    drafts = page_of_drafts(30)
    outcomes = store.upsert_tasks(drafts, NOW)
    assert [(o.created, o.updated, o.task.version) for o in outcomes] == [(True, False, 1)] * 30
    assert [o.task.id for o in outcomes] == [d.id for d in drafts]
    assert store.get_tasks([d.id for d in drafts]) == {o.task.id: o.task for o in outcomes}
    for d in drafts:
        assert [(e.action, e.to_status, e.detail) for e in store.task_history(d.id)] == [
            ("created", "open", {"focus_version": "1"})
        ]
    assert store.queue_counts() == {
        "scheduling": {"open": 10},
        "follow-up": {"open": 10},
        "records": {"open": 10},
    }
    assert store.list_tasks(queue="records", rule_id="rule-1", limit=100).total == 5
    assert store.rules_with_tasks(SOURCE, "Appointment", ["rule-0", "rule-1", "rule-9"]) == {
        "rule-0",
        "rule-1",
    }


def test_upsert_tasks_page_mixing_new_changed_and_claimed_tasks(engine_store):
    """In one page: a new task is created, a changed one refreshed (version + 1), an unchanged
    one left alone, and a claimed one refreshed keeping its coordinator's state."""
    store = engine_store
    first = store.upsert_tasks(page_of_drafts(3), NOW)
    claimed = store.update_task(
        first[2].task.id,
        lambda t: TaskChange(
            replace(t, status=TaskStatus.IN_PROGRESS, assignee="alice", version=t.version + 1),
            TaskEvent(t.id, NOW, "alice", "claim", "open", "in-progress"),
        ),
    )
    later = NOW + timedelta(hours=1)
    page = [
        make_draft(source=SOURCE, focus_id="a0", rule_id="rule-0", title="Moved", queue="x"),
        page_of_drafts(1, start=1)[0],  # unchanged
        replace(page_of_drafts(1, start=2)[0], title="New title", focus_version="2"),
        page_of_drafts(1, start=3)[0],  # new
    ]
    got = store.upsert_tasks(page, later)
    assert [(o.created, o.updated, o.task.version) for o in got] == [
        (False, True, 2),
        (False, False, 1),
        (False, True, claimed.version + 1),
        (True, False, 1),
    ]
    moved, same, kept, new = (store.get_task(d.id) for d in page)
    assert (moved.queue, moved.title, moved.updated_at) == ("x", "Moved", later)
    assert same == first[1].task
    assert (kept.status, kept.assignee, kept.title, kept.version) == (
        TaskStatus.IN_PROGRESS,
        "alice",
        "New title",
        3,
    )
    assert new == got[3].task
    assert [e.action for e in store.task_history(kept.id)] == ["created", "claim", "refreshed"]
    assert [t.id for t in store.list_tasks(assignee="alice").items] == [kept.id]
    assert store.list_tasks(queue="x").total == 1


def test_concurrent_page_upserts_of_the_same_tasks_lose_no_update(engine_store):
    """Two threads upserting pages of the same tasks with different titles, round after round:
    every refresh lands (the version grows by exactly one per refresh, one event each) and no
    task is made twice."""
    store = engine_store
    shared = page_of_drafts(12)
    store.upsert_tasks(shared, NOW)
    rounds = 4
    for n in range(rounds):

        def work(i: int, n: int = n) -> list:
            """This thread's page: the shared tasks retitled, plus tasks of its own."""
            own = page_of_drafts(6, start=100 + 100 * i + 10 * n)
            return store.upsert_tasks([replace(d, title=f"t{n}-{i}") for d in shared] + own, NOW)

        results = run_together(2, work)
        for r in results:
            assert not isinstance(r, Exception), r
        for k in range(len(shared)):
            versions = sorted(results[i][k].task.version for i in range(2))
            assert versions == [2 + 2 * n, 3 + 2 * n]  # both refreshes, one after the other
            assert all(results[i][k].updated for i in range(2))
    for d in shared:
        task = store.get_task(d.id)
        assert task.version == 1 + 2 * rounds
        actions = [e.action for e in store.task_history(d.id)]
        assert actions == ["created"] + ["refreshed"] * 2 * rounds
    assert store.list_tasks(limit=500).total == 12 + 2 * 6 * rounds


def test_concurrent_first_upserts_of_one_page_create_each_task_once(engine_store):
    """Two threads writing the same page of new drafts: each task is created by exactly one of
    them, the other finds it unchanged; one "created" event each."""
    store = engine_store
    drafts = page_of_drafts(20)
    results = run_together(2, lambda _: store.upsert_tasks(drafts, NOW))
    for r in results:
        assert not isinstance(r, Exception), r
    for k, d in enumerate(drafts):
        assert sorted(results[i][k].created for i in range(2)) == [False, True]
        assert [e.action for e in store.task_history(d.id)] == ["created"]
    assert store.list_tasks(limit=100).total == 20


def test_rules_with_tasks_names_rules_with_a_task_of_the_source(engine_store):
    """Rules with a task on the source's resources of the type are named, rules without any
    task are not; an empty question has an empty answer."""
    store = engine_store
    assert store.rules_with_tasks(SOURCE, "Appointment", ["rule-0", "rule-1"]) == set()
    store.upsert_tasks(page_of_drafts(1), NOW)  # rule-0 only
    assert store.rules_with_tasks(SOURCE, "Appointment", ["rule-0", "rule-1"]) == {"rule-0"}
    assert store.rules_with_tasks(SOURCE, "Appointment", []) == set()


def test_rules_with_tasks_on_some_resources_names_at_least_theirs(engine_store):
    """Asked about some resources, an engine names every rule with a task on one of them (it
    may name more: Redis has no index by resource, and answers for the type)."""
    store = engine_store
    store.upsert_tasks(page_of_drafts(2), NOW)  # rule-0 on a0, rule-1 on a1
    rules = ["rule-0", "rule-1", "rule-2"]
    assert store.rules_with_tasks(SOURCE, "Appointment", rules, ["a0"]) >= {"rule-0"}
    assert store.rules_with_tasks(SOURCE, "Appointment", rules, ["a0", "a1", "a9"]) == {
        "rule-0",
        "rule-1",
    }
    assert store.rules_with_tasks("other", "Appointment", rules, ["a0", "a1"]) <= {
        "rule-0",
        "rule-1",
    }
    if isinstance(store, SqliteStore):  # exact: the (rule, source, type, focus) index
        assert store.rules_with_tasks(SOURCE, "Appointment", rules, ["a1"]) == {"rule-1"}
        assert store.rules_with_tasks(SOURCE, "Appointment", rules, ["a9"]) == set()
        many = [f"x{i}" for i in range(2000)] + ["a0"]  # more than one IN chunk
        assert store.rules_with_tasks(SOURCE, "Appointment", rules, many) == {"rule-0"}


def test_resources_of_a_page_killed_before_its_tasks_are_mapped_again(engine_store):
    """A process dies after a page's resources are written and before their tasks are: when
    the page comes again (its cursor did not move), the resources count as changed and their
    rules run, on either engine (SQLite: the batch rolls back; Redis: `mark_mapped` was never
    called). Once mapped, the same page is unchanged."""
    store = engine_store
    page = [m for m in sample("MedicationStatement") if m["status"] == "active"][:5]
    assert page
    try:
        with store.batch():
            store.put_resources("ehr", [(r, content_hash(r)) for r in page], unmapped=True)
            raise RuntimeError("killed")  # before any task was written
    except RuntimeError:
        pass
    ingestor = Ingestor(
        store, RuleSet.load(ROOT / "mappings"), TaskService(store, lambda: NOW, []), lambda: NOW
    )
    result = ingestor.ingest("ehr", page, "MedicationStatement", initial=True)
    assert result.stored == len(page)
    for statement in page:
        tid = task_id("medication-reconciliation", "ehr", "MedicationStatement", statement["id"])
        assert store.get_task(tid) is not None
    again = ingestor.ingest("ehr", page, "MedicationStatement", initial=True)
    assert (again.stored, again.unchanged) == (0, len(page))


def test_a_new_resource_of_a_killed_page_is_still_new_when_it_comes_again(engine_store):
    """Killed after writing a page of Patients new to the store, before their tasks: on the
    retry they are still new (`trigger: new` intake reviews open), on either engine."""
    store = engine_store
    alive = [p for p in sample("Patient") if not any(k.startswith("deceased") for k in p)][:3]
    assert alive
    try:
        with store.batch():
            store.put_resources("ehr", [(r, content_hash(r)) for r in alive], unmapped=True)
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert store.resource_hashes("ehr", "Patient", [p["id"] for p in alive]) == {}
    ingestor = Ingestor(
        store, RuleSet.load(ROOT / "mappings"), TaskService(store, lambda: NOW, []), lambda: NOW
    )
    ingestor.ingest("ehr", alive, "Patient", initial=False)  # not a first load
    for patient in alive:
        assert store.get_task(task_id("intake-review", "ehr", "Patient", patient["id"]))
    assert set(store.resource_hashes("ehr", "Patient", [p["id"] for p in alive])) == {
        p["id"] for p in alive
    }
