"""The history's store reads are indexed and bounded: their number depends on the patient's
linked records, never on how many other patients, resources or tasks the store holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from fhir_bridge.patients.history import patient_history
from fhir_bridge.patients.identity import Decision, PatientRecord, decide
from fhir_bridge.store import SqliteStore
from fhir_bridge.store.base import Store
from fhir_bridge.store.redis import RedisStore
from tests.patients.conftest import CLINIC_ID, MRN, SSN, about, fill_jane, patient, put
from tests.patients.conftest import store as jane_store  # noqa: F401  (fixture)
from tests.store.conftest import REDIS_URL, redis_client, redis_prefix  # noqa: F401
from tests.utils import NOW, make_draft

TRUSTED = (MRN, CLINIC_ID)
# Reads that walk a whole type, every task or every fact of a kind: never on this path.
SCANS = {"iter_resources", "iter_facts", "resource_counts", "queue_counts", "list_audit"}


class Counting:
    """A store proxy counting the calls made through it (names of public methods)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found):
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return found(*args, **kwargs)

        return counted


def crowd(store: Store, count: int) -> None:
    """`count` other patients, each with an appointment, a care plan and a task."""
    for n in range(count):
        pid = f"other{n}"
        put(store, "ehr", patient(pid, (MRN, f"9{n:05d}"), (SSN, "999")))
        put(store, "ehr", about("Appointment", f"ap{n}", pid, status="booked"))
        put(store, "ehr", about("CarePlan", f"cp{n}", pid, status="active"))
        draft = make_draft(source="ehr", focus_id=f"ap{n}", patient=f"Patient/{pid}")
        store.upsert_task(draft, NOW)


def calls_for(store: Store) -> Counter[str]:
    """The store calls one history of Jane (three linked records) makes."""
    counting = Counting(store)
    view = patient_history(counting, PatientRecord("ehr", "p1"), TRUSTED, NOW)  # type: ignore[arg-type]
    assert view is not None and len(view.links) == 3
    return counting.calls


def test_history_calls_do_not_grow_with_the_store(jane_store):  # noqa: F811
    """200 more patients (with resources and tasks) change no count of the history's calls."""
    before = calls_for(jane_store)
    crowd(jane_store, 200)
    assert calls_for(jane_store) == before
    assert not SCANS & set(before)


def test_history_reads_each_linked_record_once(jane_store):  # noqa: F811
    """One resources read and one tasks read per linked record; contacts reuse the former."""
    calls = calls_for(jane_store)
    assert calls["resources_for_patient"] == 3
    assert calls["iter_tasks"] == 3
    assert calls["list_facts"] == 1  # the admins' link decisions, read once


def test_history_calls_bounded_on_each_engine(empty_store):
    """On each engine: the same call counts with 0 and 100 unrelated patients stored."""
    put(empty_store, "ehr", patient("p1", (MRN, "123")))
    put(empty_store, "clinic", patient("c7", (MRN, "123"), (CLINIC_ID, "C-7")))
    put(empty_store, "lab", patient("q3", (CLINIC_ID, "C-7")))
    put(empty_store, "ehr", about("CarePlan", "cp1", "p1", status="active"))
    empty_store.upsert_task(make_draft(source="ehr", focus_id="a1", patient="Patient/p1"), NOW)
    before = calls_for(empty_store)
    crowd(empty_store, 100)
    assert calls_for(empty_store) == before
    assert not SCANS & set(before)


@pytest.mark.integration
def test_redis_history_equals_sqlite_history(redis_prefix):  # noqa: F811
    """Redis answers the history's first reads with one script (`Store.patient_reads`); the
    consolidated view is the same as SQLite's single reads give, from every linked record
    and with an admin's decision in force."""
    sqlite, redis_store = SqliteStore(":memory:"), RedisStore(REDIS_URL, key_prefix=redis_prefix)
    try:
        for engine in (sqlite, redis_store):
            fill_jane(engine)
            same = Decision(
                PatientRecord("lab", "q3"), PatientRecord("lab", "z9"), True, "ann", NOW
            )
            decide(engine, same)
        for anchor in (
            PatientRecord("ehr", "p1"),
            PatientRecord("clinic", "c7"),
            PatientRecord("lab", "z9"),
        ):
            mine = patient_history(redis_store, anchor, TRUSTED, NOW)
            assert mine is not None and mine == patient_history(sqlite, anchor, TRUSTED, NOW)
        assert len(mine.links) == 4  # z9 joins Jane through the admin's decision
        assert patient_history(redis_store, PatientRecord("ehr", "nobody"), TRUSTED, NOW) is None
    finally:
        sqlite.close()
        redis_store.close()
