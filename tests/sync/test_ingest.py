"""Tests for fhir_bridge.sync.ingest: one page through validate, store, mapping and queues."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import Ingestor, IngestResult, _PageTasks, content_hash, later
from fhir_bridge.tasks.model import TaskStatus, task_id
from fhir_bridge.tasks.service import TaskService
from tests.expected import expected_active_tasks
from tests.utils import NOW, ROOT, make_draft, sample

SOURCE = "main-ehr"
MAPPED_TYPES = [
    "Patient",
    "CarePlan",
    "Appointment",
    "MedicationStatement",
    "CoverageEligibilityRequest",
]


@pytest.fixture
def ingestor(store, rules) -> Ingestor:
    """An Ingestor (and its TaskService) with a fixed clock at NOW."""
    return Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)


def first_noshow() -> dict[str, Any]:
    """The first no-show Appointment of the sample recent enough (30 days) for a task."""
    return next(
        a
        for a in sample("Appointment")
        if a["status"] == "noshow"
        and datetime.fromisoformat(a["start"]) >= NOW - timedelta(days=30)
    )


@pytest.mark.parametrize("resource_type", MAPPED_TYPES)
def test_sample_page_creates_expected_tasks(ingestor, store, rules, resource_type):
    """A sample file loaded after its dependencies creates the tasks tests/expected.py predicts."""
    order = dependency_order(DEFAULT_RESOURCE_TYPES, rules)
    for before in order[: order.index(resource_type)]:
        ingestor.ingest(SOURCE, sample(before), before, initial=True)
    page = sample(resource_type)
    result = ingestor.ingest(SOURCE, page, resource_type, initial=True)
    counts = expected_active_tasks(NOW)
    expected = {r.id: counts[r.id] for r in rules.for_type(resource_type) if counts[r.id]}
    assert sum(expected.values()) > 0
    assert result.tasks_by_rule == expected
    assert result.tasks_created == sum(expected.values())
    assert (result.received, result.stored, result.quarantined) == (len(page), len(page), 0)
    assert (result.tasks_closed, result.rule_errors) == (0, 0)
    for rule_id, n in expected.items():
        assert store.list_tasks(rule_id=rule_id).total == n
    assert store.resource_counts(SOURCE)[resource_type] == len(page)


def test_same_page_again_changes_nothing(ingestor, store):
    """Re-ingesting an identical page reports all unchanged and creates no task."""
    page = sample("Appointment")
    ingestor.ingest(SOURCE, page, "Appointment")
    before = store.list_tasks(limit=1000)
    again = ingestor.ingest(SOURCE, copy.deepcopy(page), "Appointment")
    assert (again.received, again.unchanged, again.stored) == (len(page), len(page), 0)
    assert (again.tasks_created, again.tasks_updated, again.tasks_by_rule) == (0, 0, {})
    assert store.list_tasks(limit=1000) == before


def test_new_server_version_without_content_change_is_unchanged(ingestor):
    """A re-save that only bumps meta.versionId/lastUpdated counts as unchanged."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [appt])
    resaved = copy.deepcopy(appt)
    resaved["meta"] |= {"versionId": "2", "lastUpdated": "2026-11-26T11:00:00Z"}
    result = ingestor.ingest(SOURCE, [resaved])
    assert (result.unchanged, result.stored, result.tasks_updated) == (1, 0, 0)


def test_changed_resource_refreshes_its_task(ingestor, store):
    """A no-show whose appointment type changes updates its task's title, no new task."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [appt])
    tid = task_id("no-show-outreach", SOURCE, "Appointment", appt["id"])
    assert store.get_task(tid).title == "Reach out after a missed routine visit"
    changed = copy.deepcopy(appt)
    changed["appointmentType"]["coding"][0]["code"] = "FOLLOWUP"
    result = ingestor.ingest(SOURCE, [changed])
    assert (result.stored, result.tasks_created, result.tasks_updated) == (1, 0, 1)
    assert store.list_tasks().total == 1
    task = store.get_task(tid)
    assert task.title == "Reach out after a missed follow-up visit"
    assert task.version == 2


def test_resource_no_longer_matching_closes_its_task(ingestor, store):
    """A no-show corrected to fulfilled auto-closes its task, cancelled, with the rule's reason."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [appt])
    tid = task_id("no-show-outreach", SOURCE, "Appointment", appt["id"])
    result = ingestor.ingest(SOURCE, [{**appt, "status": "fulfilled"}])
    assert (result.tasks_closed, result.tasks_created, result.tasks_updated) == (1, 0, 0)
    task = store.get_task(tid)
    assert task.status is TaskStatus.CANCELLED
    last = store.task_history(tid)[-1]
    assert (last.actor, last.action, last.from_status, last.to_status) == (
        "bridge",
        "auto-closed",
        "open",
        "cancelled",
    )
    assert last.detail["note"].startswith("The missed appointment is no longer recent")


def test_claimed_task_is_closed_too(ingestor, store):
    """A task a coordinator holds (in progress) is closed as well when its condition ends."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [appt])
    tid = task_id("no-show-outreach", SOURCE, "Appointment", appt["id"])
    ingestor.tasks.claim(tid, "alice")
    result = ingestor.ingest(SOURCE, [{**appt, "status": "fulfilled"}])
    assert result.tasks_closed == 1
    assert store.get_task(tid).status is TaskStatus.CANCELLED


def test_closed_task_stays_closed_when_its_resource_matches_again(ingestor, store):
    """Without reopen_on_change, a resource matching again does not reopen its closed task."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [appt])
    tid = task_id("no-show-outreach", SOURCE, "Appointment", appt["id"])
    ingestor.ingest(SOURCE, [{**appt, "status": "fulfilled"}])
    result = ingestor.ingest(SOURCE, [appt])
    assert (result.stored, result.tasks_created, result.tasks_reopened) == (1, 0, 0)
    assert store.get_task(tid).status is TaskStatus.CANCELLED
    assert store.list_tasks().total == 1


# `%now + 7 days` means 7 days after the task opened; recomputing it on every sweep pushes the
# due date forward for ever and bumps the version under a coordinator (409 on their next move).
def test_sweep_later_leaves_an_unchanged_task_alone(store, rules):
    """A sweep an hour later keeps an unchanged task's due (`%now + 7 days`) and version."""
    clock = [NOW]
    ingestor = Ingestor(store, rules, TaskService(store, lambda: clock[0], []), lambda: clock[0])
    statement = next(m for m in sample("MedicationStatement") if m["status"] == "active")
    ingestor.ingest(SOURCE, [statement], "MedicationStatement", initial=True)
    tid = task_id("medication-reconciliation", SOURCE, "MedicationStatement", statement["id"])
    before = store.get_task(tid)
    assert before.due == NOW + timedelta(days=7)
    clock[0] = NOW + timedelta(hours=1)
    result = ingestor.reevaluate()
    after = store.get_task(tid)
    assert (after.due, after.version) == (before.due, before.version)
    assert result.tasks_updated == 0


def test_invalid_resource_mid_page_is_quarantined(ingestor, store):
    """A bad resource in the middle is quarantined with reasons; the rest of the page is stored."""
    good = sample("Appointment")[:3]
    bad = {**copy.deepcopy(good[1]), "id": "bad-1", "start": "2026-02-30T10:00:00Z"}
    page = [good[0], bad, good[2]]
    result = ingestor.ingest(SOURCE, page, "Appointment")
    assert (result.received, result.stored, result.quarantined) == (3, 2, 1)
    assert store.get_resource(SOURCE, "Appointment", good[0]["id"]) is not None
    assert store.get_resource(SOURCE, "Appointment", good[2]["id"]) is not None
    assert store.get_resource(SOURCE, "Appointment", "bad-1") is None
    (entry,), total = store.list_quarantine(SOURCE)
    assert total == 1
    assert (entry.resource_type, entry.resource_id, entry.at) == ("Appointment", "bad-1", NOW)
    assert [i["expression"] for i in entry.issues] == ["Appointment.start"]
    assert entry.body == bad


def test_resource_the_library_chokes_on_is_quarantined(ingestor, store):
    """A resource on which fhir.resources itself fails (AttributeError for a number as an
    Attachment.url) is quarantined; the rest of its page is stored (it stopped the page)."""
    good = sample("Patient")[:2]
    odd = {**copy.deepcopy(good[0]), "id": "odd-1", "photo": [{"url": 7}]}
    result = ingestor.ingest(SOURCE, [good[0], odd, good[1]], "Patient")
    assert (result.received, result.stored, result.quarantined) == (3, 2, 1)
    (entry,), _ = store.list_quarantine(SOURCE)
    assert entry.resource_id == "odd-1" and entry.issues[0]["code"] == "exception"


def test_every_unidentifiable_entry_of_a_page_is_kept(ingestor, store):
    """Each quarantined entry of a page is listed, including several without an id."""
    page = [{"resourceType": "Appointment", "status": "noshow"}, "junk", 42]
    result = ingestor.ingest(SOURCE, page, "Appointment")
    assert result.quarantined == 3
    entries, total = store.list_quarantine(SOURCE)
    assert total == 3
    assert all(e.resource_id is None for e in entries)


def test_wrong_type_in_page_is_quarantined(ingestor, store):
    """A Patient in an Appointment search page is quarantined as an unexpected type."""
    patient = sample("Patient")[0]
    result = ingestor.ingest(SOURCE, [patient], "Appointment")
    assert (result.quarantined, result.stored) == (1, 0)
    (entry,), _ = store.list_quarantine()
    assert entry.resource_type == "Patient"
    assert entry.issues[0]["code"] == "invalid"


def test_fixed_resource_leaves_quarantine(ingestor, store):
    """When a quarantined resource later validates, it is stored and released."""
    appt = first_noshow()
    ingestor.ingest(SOURCE, [{**appt, "start": "2026-02-30T10:00:00Z"}])
    assert store.list_quarantine()[1] == 1
    result = ingestor.ingest(SOURCE, [appt])
    assert (result.stored, result.tasks_created) == (1, 1)
    assert store.list_quarantine()[1] == 0


def test_max_last_updated_is_the_latest_instant(ingestor):
    """max_last_updated is the latest meta.lastUpdated of the page, comparing instants."""
    instants = ["2026-11-26T10:00:00Z", "2026-11-26T12:30:00+02:00", "2026-11-26T10:15:00.5Z"]
    page = []
    for appt, instant in zip(sample("Appointment"), instants, strict=False):
        page.append({**appt, "meta": {**appt.get("meta", {}), "lastUpdated": instant}})
    page.append(sample("Appointment")[5])  # no lastUpdated at all
    result = ingestor.ingest(SOURCE, page, "Appointment")
    assert result.max_last_updated == "2026-11-26T12:30:00+02:00"


def test_page_without_last_updated_has_none(ingestor):
    """A page whose resources carry no meta.lastUpdated reports None."""
    assert ingestor.ingest(SOURCE, sample("Appointment")[:2]).max_last_updated is None


def test_later_and_result_add():
    """later() picks the later instant (None is earliest); add() sums counts and merges rules."""
    assert later(None, "2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
    assert later("2026-01-01T01:00:00+02:00", "2025-12-31T23:30:00Z") == ("2025-12-31T23:30:00Z")
    total = IngestResult(received=2, tasks_created=1, tasks_by_rule={"a": 1})
    total.add(IngestResult(received=3, tasks_created=2, tasks_by_rule={"a": 1, "b": 1}))
    assert (total.received, total.tasks_created, total.tasks_by_rule) == (5, 3, {"a": 2, "b": 1})


def test_content_hash_ignores_version_and_last_updated():
    """content_hash is the same when only meta.versionId / meta.lastUpdated differ."""
    appt = first_noshow()
    bumped = copy.deepcopy(appt)
    bumped["meta"] |= {"versionId": "9", "lastUpdated": "2026-11-26T11:00:00Z"}
    assert content_hash(bumped) == content_hash(appt)
    assert bumped["meta"]["versionId"] == "9"  # the caller's resource is not modified


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(status="booked"),
        lambda r: r["meta"].update(tag=[]),
        lambda r: r["meta"].update(profile=["http://example.org/p"]),
    ],
    ids=["status", "meta.tag", "meta.profile"],
)
def test_content_hash_sees_other_changes(change):
    """Any change outside meta.versionId/lastUpdated changes the hash."""
    appt = first_noshow()
    changed = copy.deepcopy(appt)
    change(changed)
    assert content_hash(changed) != content_hash(appt)


def test_content_hash_ignores_key_order():
    """The hash is of canonical JSON: key order does not matter."""
    appt = first_noshow()
    reordered = dict(reversed(list(appt.items())))
    assert content_hash(reordered) == content_hash(appt)


def test_page_task_shortcut_covers_only_the_pages_own_resources():
    """A rule without a task on any of the page's resources answers None for them without a
    read; a task of that rule on another resource of the type (a dependent re-evaluated with
    the page) is still found."""
    store = SqliteStore(":memory:")
    [rule] = [
        r
        for r in RuleSet.load(ROOT / "mappings").for_type("Appointment")
        if r.id == "no-show-outreach"
    ]
    store.upsert_tasks([make_draft(source="ehr", focus_id="a2")], NOW)
    tasks = _PageTasks(store, NOW)
    page = [{"resourceType": "Appointment", "id": "a1"}]
    tasks.prefetch("ehr", "Appointment", [rule], page)
    assert tasks.get(rule, "ehr", page[0]) is None
    other = tasks.get(rule, "ehr", {"resourceType": "Appointment", "id": "a2"})
    assert other is not None and other.focus_id == "a2"
    store.close()
