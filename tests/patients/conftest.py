"""A store holding one patient's records in three sources, shaped to exercise linking,
conflicts, dedupe and sections."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from fhir_bridge.store import SqliteStore
from fhir_bridge.store.base import Store
from fhir_bridge.store.redis import RedisStore
from fhir_bridge.sync.ingest import content_hash
from fhir_bridge.tasks.model import Task, TaskChange, TaskEvent, TaskStatus
from tests.store.conftest import REDIS_URL, redis_client, redis_prefix  # noqa: F401
from tests.utils import NOW, make_draft

MRN = "http://hospital.example.org/mrn"
CLINIC_ID = "urn:clinic:patient-id"
SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient(pid: str, *idents: tuple[str, str], phone: str = "555-0100", **extra) -> dict:
    """A Patient with the given (system, value) identifiers."""
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-01T00:00:00Z"},
        "identifier": [{"system": s, "value": v} for s, v in idents],
        "name": [{"use": "official", "family": "Roe", "given": ["Jane"]}],
        "birthDate": "1970-01-01",
        "gender": "female",
        "telecom": [{"system": "phone", "value": phone}],
        **extra,
    }


def about(rtype: str, rid: str, pid: str, version: str = "1", **fields) -> dict:
    """A resource of `rtype` about Patient `pid`."""
    ref = {"reference": f"Patient/{pid}"}
    key = {"Coverage": "beneficiary", "CoverageEligibilityRequest": "patient"}.get(rtype, "subject")
    body = {"resourceType": rtype, "id": rid, "meta": {"versionId": version}, **fields}
    if rtype == "Appointment":
        body["participant"] = [{"actor": ref, "status": "accepted"}]
    else:
        body[key] = ref
    return body


def put(store: Store, source: str, resource: dict) -> None:
    """Store a resource as ingest would."""
    store.put_resource(source, resource, content_hash(resource))


@pytest.fixture
def store() -> Iterator[Store]:
    """Jane Roe as p1 in "ehr" and c7 in "clinic" (same MRN), q3 in "lab" (linked to c7 by
    the clinic's id), and an unrelated z9 in "lab" sharing only an untrusted SSN."""
    s = SqliteStore(":memory:")
    fill_jane(s)
    yield s
    s.close()


def fill_jane(s: Store) -> None:
    """Store Jane Roe's records and tasks (see the `store` fixture)."""
    put(s, "ehr", patient("p1", (MRN, "123"), (SSN, "999")))
    put(s, "clinic", patient("c7", (MRN, "123"), (CLINIC_ID, "C-7"), phone="555-0199"))
    put(s, "lab", patient("q3", (CLINIC_ID, "C-7")))
    put(s, "lab", patient("z9", (SSN, "999"), name=[{"family": "Other", "given": ["Zed"]}]))
    eligibility = {"identifier": [{"system": "urn:elig", "value": "E1"}], "status": "active"}
    put(s, "ehr", about("CoverageEligibilityRequest", "e1", "p1", "4", **eligibility))
    put(s, "clinic", about("CoverageEligibilityRequest", "ce-77", "c7", "2", **eligibility))
    put(s, "ehr", about("CarePlan", "cp1", "p1", status="active", title="Diabetes plan"))
    put(s, "clinic", about("CarePlan", "cp9", "c7", status="completed", title="Rehab"))
    future, past = (NOW + timedelta(days=3)).isoformat(), (NOW - timedelta(days=3)).isoformat()
    for aid, status, start in (
        ("a-up", "booked", future),
        ("a-miss", "noshow", past),
        ("a-canc", "cancelled", future),
        ("a-done", "fulfilled", past),
    ):
        put(s, "ehr", about("Appointment", aid, "p1", status=status, start=start))
    med = {"medicationCodeableConcept": {"text": "Metformin 500 mg"}}
    put(s, "ehr", about("MedicationStatement", "m1", "p1", status="active", **med))
    put(s, "lab", about("MedicationStatement", "m2", "q3", status="stopped", **med))
    put(s, "lab", about("CarePlan", "cp-z", "z9", status="active", title="Not Jane's"))
    reconcile = make_draft(
        rule_id="medication-reconciliation",
        source="ehr",
        focus_type="MedicationStatement",
        focus_id="m1",
        patient="Patient/p1",
        queue="medications",
        kind="medication-reconciliation",
    )
    task = s.upsert_task(reconcile, NOW).task

    def complete(t: Task) -> TaskChange:
        """Complete the task as a coordinator would."""
        new = replace(t, status=TaskStatus.COMPLETED, assignee="alice", updated_at=NOW)
        return TaskChange(new, TaskEvent(t.id, NOW, "alice", "status", "open", "completed"))

    s.update_task(task.id, complete)
    s.upsert_task(make_draft(source="clinic", focus_id="a-c", patient="Patient/c7"), NOW)
    s.upsert_task(make_draft(source="lab", focus_id="a-z", patient="Patient/z9"), NOW)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def empty_store(request, tmp_path) -> Iterator[Store]:
    """An empty store of each engine (Redis under a fresh prefix, deleted afterwards)."""
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "bridge.db")
    else:
        store = RedisStore(REDIS_URL, key_prefix=request.getfixturevalue("redis_prefix"))
    yield store
    store.close()


@pytest.fixture
def jane_on(empty_store: Store) -> Store:
    """Jane Roe's records (the `store` fixture's) on each engine."""
    fill_jane(empty_store)
    return empty_store
