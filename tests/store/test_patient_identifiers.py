"""The identifier lookup cross-source linking uses, on both engines: kept in step with every
write of a Patient (new, changed identifiers, deleted), other types ignored."""

from __future__ import annotations

from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.ingest import content_hash

MRN = "urn:mrn"


def patient(pid: str, *values: str, system: str = MRN) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": system, "value": v} for v in values]
        + [{"value": "no-system"}, {"system": MRN}],
    }


def put(store, source: str, body: dict) -> None:
    store.put_resource(source, body, content_hash(body))


def test_lookup_follows_writes(engine_store) -> None:
    store = engine_store
    put(store, "ehr", patient("p1", "A", "B"))
    put(store, "lab", patient("q1", "A"))
    put(store, "lab", patient("x1", "A", system="urn:other"))
    put(
        store,
        "lab",
        {"resourceType": "Practitioner", "id": "d1", "identifier": [{"system": MRN, "value": "A"}]},
    )
    assert store.patients_with_identifier(MRN, "A") == [("ehr", "p1"), ("lab", "q1")]
    assert store.patients_with_identifier(MRN, "B") == [("ehr", "p1")]
    put(store, "ehr", patient("p1", "C"))  # identifiers changed: old ones no longer find it
    assert store.patients_with_identifier(MRN, "A") == [("lab", "q1")]
    assert store.patients_with_identifier(MRN, "B") == []
    assert store.patients_with_identifier(MRN, "C") == [("ehr", "p1")]
    store.delete_resource("lab", "Patient", "q1")
    assert store.patients_with_identifier(MRN, "A") == []
    assert store.patients_with_identifier("urn:other", "A") == [("lab", "x1")]


def test_an_older_file_is_indexed_when_opened(tmp_path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    put(store, "ehr", patient("p1", "A"))
    # as a file written before the index existed: no rows, no marker
    store._db.execute("DELETE FROM patient_identifiers")
    store._db.execute("DELETE FROM meta WHERE key='patient_identifiers'")
    assert store.patients_with_identifier(MRN, "A") == []
    store.close()
    again = SqliteStore(path)
    assert again.patients_with_identifier(MRN, "A") == [("ehr", "p1")]
    again.close()


def test_redis_keys_written_before_the_index_are_indexed_when_opened(redis_stores) -> None:
    store = redis_stores()
    put(store, "ehr", patient("p1", "A"))
    client, keys = store._redis, store.keys
    client.delete(keys.patient_identifier(f"{MRN}|A"))
    client.hdel(keys.meta, "patient_identifier_index")
    assert store.patients_with_identifier(MRN, "A") == []
    again = redis_stores()
    assert again.patients_with_identifier(MRN, "A") == [("ehr", "p1")]


def test_task_counts_of_an_older_file_are_filled_when_opened(tmp_path) -> None:
    """`queue_counts` reads a table kept by triggers; a file from before it is counted once."""
    from tests.utils import NOW, make_draft

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    for i in range(3):
        store.upsert_task(make_draft(focus_id=f"a{i}", queue="scheduling"), NOW)
    store.upsert_task(make_draft(focus_id="b", queue="insurance"), NOW)
    before = store.queue_counts()
    assert before == {"insurance": {"open": 1}, "scheduling": {"open": 3}}
    store._db.execute("DELETE FROM task_counts")
    store._db.execute("DELETE FROM meta WHERE key='task_counts'")
    assert store.queue_counts() == {}
    store.close()
    again = SqliteStore(path)
    assert again.queue_counts() == before
    again.close()
