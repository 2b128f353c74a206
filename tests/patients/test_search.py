"""Patient search over every source's stored records."""

from __future__ import annotations

from unittest.mock import patch

import pytest

from fhir_bridge.patients.search import PatientQuery, search_patients
from fhir_bridge.store import SqliteStore
from fhir_bridge.store.base import Store
from fhir_bridge.store.redis import RedisStore
from tests.patients.conftest import MRN, fill_jane, patient, put
from tests.store.conftest import REDIS_URL, redis_client, redis_prefix  # noqa: F401


def found(store, **query) -> list[tuple[str, str]]:
    """(source, id) of the matches of a query."""
    return [(m.source, m.id) for m in search_patients(store, PatientQuery(**query))]


def test_name_ignores_case_and_accents_and_matches_word_starts(store):
    """'jan ROE' finds Jane Roe in every source; 'zed' only the other patient."""
    assert found(store, name="jan ROE") == [("clinic", "c7"), ("ehr", "p1"), ("lab", "q3")]
    assert found(store, name="zéd") == [("lab", "z9")]
    assert found(store, name="ane") == []


def test_birthdate_exact_or_prefix(store):
    """A full date or a year prefix matches; another date does not."""
    assert len(found(store, birthdate="1970-01-01")) == 4
    assert len(found(store, birthdate="1970")) == 4
    assert found(store, birthdate="1971") == []


def test_identifier_with_or_without_system(store):
    """system|value must match both; a bare value matches any system."""
    assert found(store, identifier=f"{MRN}|123") == [("clinic", "c7"), ("ehr", "p1")]
    assert found(store, identifier="urn:other|123") == []
    assert len(found(store, identifier="999")) == 2


def test_parts_combine(store):
    """Every given part must match."""
    assert found(store, name="roe", identifier="C-7") == [("clinic", "c7"), ("lab", "q3")]
    assert not PatientQuery()


QUERIES = [
    {"name": "jan ROE"},
    {"name": "zéd"},
    {"name": "r"},
    {"name": "ane"},
    {"birthdate": "1970"},
    {"birthdate": "1970-01-01"},
    {"birthdate": "1971"},
    {"identifier": "999"},
    {"identifier": "C-7", "name": "roe"},
    {"identifier": f"{MRN}|123", "birthdate": "1970-01"},
]


def test_indexed_search_answers_what_reading_every_patient_answers(jane_on):
    """Each engine's term index (`Store.patients_with_term`) gives the records a scan of every
    Patient gives (`Store`'s default), also after a Patient changes and one is deleted."""

    def scan(term: str, prefix: bool) -> set[tuple[str, str]]:
        return Store.patients_with_term(jane_on, term, prefix)

    def same() -> None:
        for query in QUERIES:
            indexed = found(jane_on, **query)
            with patch.object(jane_on, "patients_with_term", scan):
                assert indexed == found(jane_on, **query), query

    same()
    assert found(jane_on, name="jan ROE") == [("clinic", "c7"), ("ehr", "p1"), ("lab", "q3")]
    renamed = patient("p1", (MRN, "123"), name=[{"family": "Doe", "given": ["Janet"]}])
    put(jane_on, "ehr", renamed | {"birthDate": "1971-02-03"})
    jane_on.delete_resource("lab", "Patient", "q3")
    same()
    assert found(jane_on, name="roe") == [("clinic", "c7")]
    assert found(jane_on, name="janet doe") == [("ehr", "p1")]
    assert found(jane_on, birthdate="1971") == [("ehr", "p1")]
    assert jane_on.patients_with_term("n:roe", prefix=False) == {("clinic", "c7")}
    assert jane_on.patients_with_term("n:ro", prefix=False) == set()


@pytest.mark.integration
def test_term_index_is_built_for_patients_stored_before_it(tmp_path, redis_client, redis_prefix):  # noqa: F811
    """A store written before the index existed gets it when opened (both engines)."""
    sqlite = SqliteStore(tmp_path / "old.db")
    fill_jane(sqlite)
    with sqlite.batch():
        sqlite._db.execute("DELETE FROM patient_terms")
        sqlite._db.execute("DELETE FROM meta WHERE key = 'patient_terms'")
    sqlite.close()
    reopened = SqliteStore(tmp_path / "old.db")
    assert found(reopened, name="roe") == [("clinic", "c7"), ("ehr", "p1"), ("lab", "q3")]
    reopened.close()

    redis_store = RedisStore(REDIS_URL, key_prefix=redis_prefix)
    fill_jane(redis_store)
    redis_client.delete(redis_store.keys.patient_terms)
    redis_client.hdel(redis_store.keys.meta, "patient_terms_index")
    redis_store.close()
    again = RedisStore(REDIS_URL, key_prefix=redis_prefix)
    assert found(again, name="roe") == [("clinic", "c7"), ("ehr", "p1"), ("lab", "q3")]
    # the backfill recorded each Patient's terms, so a later change drops the old ones
    put(again, "ehr", patient("p1", (MRN, "123"), name=[{"family": "Doe"}]))
    assert ("ehr", "p1") not in again.patients_with_term("n:roe", prefix=False)
    again.close()
