"""Page-at-once ingest (one batch of writes, prefetched tasks, a per-page lookup cache) gives
what resource-at-a-time ingest gives; the content hash text is the one earlier versions hashed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.sandbox import sample_data_dir
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import (
    Ingestor,
    IngestResult,
    ProfilePolicy,
    StoreLookup,
    canonical_json,
)
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.profiles import ProfileSet
from tests.utils import NOW, ROOT

SOURCE = "main-ehr"


def _samples() -> dict[str, list[dict[str, Any]]]:
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(sample_data_dir().glob("*.ndjson"))
    }


def _hl7_examples() -> list[Any]:
    return [json.loads(p.read_text()) for p in sorted((ROOT / "tests/data/hl7").rglob("*.json"))]


def _old_canonical(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def test_canonical_json_is_the_text_earlier_versions_hashed():
    """Every sample resource and HL7 example gives the bytes json.dumps gave (hashes stay)."""
    resources = [r for rows in _samples().values() for r in rows] + _hl7_examples()
    assert len(resources) > 700
    for resource in resources:
        assert canonical_json(resource) == _old_canonical(resource)


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70, "small": -(2**63)},
        {"text": "lone \ud800 surrogate"},
        {"text": 'caf\u00e9 \u2028 \x01 "q" \\ /', "n": [0, -1, 2.5, 100.0, True, None]},
        {"b": {"z": 1, "a": [{"y": 2, "x": 1}]}, "a": 0},
    ],
)
def test_canonical_json_of_edge_values(value):
    """Values orjson refuses or spells differently still give json's canonical text."""
    assert canonical_json(value) == _old_canonical(value)


def _ingest_all(
    store: SqliteStore,
    rules: RuleSet,
    profile_set: ProfileSet,
    pages: list[tuple[str, list[dict[str, Any]]]],
    page_size: int | None,
    initial: bool,
) -> IngestResult:
    ingestor = Ingestor(
        store,
        rules,
        TaskService(store, lambda: NOW, []),
        lambda: NOW,
        profile_set=profile_set,
        policies={SOURCE: ProfilePolicy(tuple(p.url for p in profile_set.profiles))},
    )
    total = IngestResult()
    for rtype, rows in pages:
        size = page_size or max(len(rows), 1)
        for start in range(0, len(rows), size):
            chunk = copy.deepcopy(rows[start : start + size])
            total.add(ingestor.ingest(SOURCE, chunk, rtype, initial=initial))
    return total


def _state(store: SqliteStore) -> tuple[Any, ...]:
    tasks = store.list_tasks(limit=100_000).items
    history = {t.id: [(e.action, e.to_status) for e in store.task_history(t.id)] for t in tasks}
    quarantined = sorted(
        (e.resource_type, e.resource_id or "", json.dumps(e.issues, sort_keys=True))
        for e in store.list_quarantine(limit=100_000)[0]
    )
    hashes = {
        rtype: store.resource_hashes(SOURCE, rtype, [r.id for r in store.iter_resources(rtype)])
        for rtype in store.resource_counts()
    }
    return sorted(tasks, key=lambda t: t.id), history, quarantined, hashes


def _second_pass(samples: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[Any]]]:
    """Changes a later sync brings: statuses move (tasks close, reopen, refresh), a bogus
    gender (quarantined), a new patient, and duplicates of one resource within a page."""
    appointments = copy.deepcopy(samples["Appointment"])
    cycle = ["booked", "cancelled", "noshow", "pending", "waitlist", "fulfilled"]
    for i, a in enumerate(appointments):
        a["status"] = cycle[i % len(cycle)]
    appointments.insert(3, copy.deepcopy(appointments[10]) | {"status": "proposed"})
    statements = copy.deepcopy(samples["MedicationStatement"])
    for i, m in enumerate(statements):
        m["status"] = ["active", "stopped", "completed", "intended"][i % 4]
    patients = copy.deepcopy(samples["Patient"])
    patients[0]["gender"] = "bogus"
    patients.append(copy.deepcopy(patients[2]) | {"id": "brand-new-patient"})
    patients.append(copy.deepcopy(patients[0]) | {"gender": "female"})  # fixed, same page
    return [
        ("Patient", patients),
        ("Appointment", appointments),
        ("MedicationStatement", statements),
    ]


def test_whole_pages_match_one_resource_pages(tmp_path, rules, profile_set):
    """A first load and a changing second sync leave the same tasks, history, quarantine and
    stored hashes whether pages hold everything or one resource each."""
    samples = _samples()
    first = [
        (t, samples[t]) for t in dependency_order(DEFAULT_RESOURCE_TYPES, rules) if t in samples
    ]
    states, results = [], []
    for name, size in (("whole", None), ("single", 1)):
        store = SqliteStore(tmp_path / f"{name}.db")
        try:
            one = _ingest_all(store, rules, profile_set, first, size, initial=True)
            two = _ingest_all(store, rules, profile_set, _second_pass(samples), size, False)
            states.append(_state(store))
            results.append((one, two))
        finally:
            store.close()
    (whole_first, whole_second), (_, single_second) = results
    assert whole_first.tasks_created > 100 and whole_first.rule_errors == 0
    assert whole_second.tasks_closed > 0 and whole_second.quarantined == 1
    assert whole_second.tasks_by_rule.get("intake-review") == 1
    for whole, single in zip(results[0], results[1], strict=True):
        for counter in ("received", "stored", "unchanged", "quarantined", "tasks_created"):
            assert getattr(whole, counter) == getattr(single, counter), counter
    assert whole_second.tasks_closed == single_second.tasks_closed
    assert states[0] == states[1]


def test_valid_copy_before_an_invalid_one_keeps_the_quarantine(store, rules, profile_set):
    """Within one page the later copy of a resource decides whether it stays quarantined."""
    ingestor = Ingestor(
        store, rules, TaskService(store, lambda: NOW, []), lambda: NOW, profile_set=profile_set
    )
    good = copy.deepcopy(_samples()["Patient"][0])
    bad = copy.deepcopy(good) | {"gender": "bogus"}
    result = ingestor.ingest(SOURCE, [good, bad], "Patient")
    assert (result.stored, result.quarantined) == (1, 1)
    assert store.list_quarantine(SOURCE)[1] == 1
    result = ingestor.ingest(SOURCE, [copy.deepcopy(bad), good | {"active": False}], "Patient")
    assert (result.stored, result.quarantined) == (1, 1)
    assert store.list_quarantine(SOURCE)[1] == 0


class _CountingStore(SqliteStore):
    """A SQLite store that counts patient lookups."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lookups = 0

    def resources_for_patient(self, source, patient, resource_type=None):
        """Count, then read."""
        self.lookups += 1
        return super().resources_for_patient(source, patient, resource_type)


def test_store_lookup_reads_each_patient_type_once_until_that_type_is_stored(tmp_path):
    """Repeated lookups are served from the page's cache; storing the type reads again."""
    store = _CountingStore(tmp_path / "b.db")
    try:
        coverage = {
            "resourceType": "Coverage",
            "id": "c1",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
        }
        store.put_resource(SOURCE, coverage, "h1")
        lookup = StoreLookup(store, SOURCE)
        assert lookup.for_patient("Coverage", "Patient/p1") == [coverage]
        assert lookup.for_patient("Coverage", "Patient/p1") == [coverage]
        assert lookup.for_patient("Coverage", "Patient/p2") == []
        assert store.lookups == 2
        moved = coverage | {"id": "c2"}
        store.put_resource(SOURCE, moved, "h2")
        lookup.forget("Appointment")
        assert len(lookup.for_patient("Coverage", "Patient/p1")) == 1  # still cached
        lookup.forget("Coverage")
        assert lookup.for_patient("Coverage", "Patient/p1") == [coverage, moved]
        assert store.lookups == 3
    finally:
        store.close()
