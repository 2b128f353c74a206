"""Patient search over every source's stored records."""

from __future__ import annotations

from fhir_bridge.patients.search import PatientQuery, search_patients
from tests.patients.conftest import MRN


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
