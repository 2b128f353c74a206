"""Find stored Patient records by name, birth date or identifier, across every source.

Name matching ignores case and accents and wants every word of the query to start a word
of the name (given, family or text); a birth date matches exactly or by prefix (`1970`,
`1970-01`); an identifier is `system|value` or a bare value (any system).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_bridge.patients.history import demographics
from fhir_bridge.patients.terms import BIRTH, IDENTIFIER, NAME, fold, name_words
from fhir_bridge.store.base import Store, StoredResource


@dataclass(frozen=True)
class PatientQuery:
    """What to look for; every given part must match."""

    name: str | None = None
    birthdate: str | None = None
    identifier: str | None = None

    def __bool__(self) -> bool:
        return any((self.name, self.birthdate, self.identifier))


@dataclass
class PatientMatch:
    """A stored Patient record that matches, with enough to tell people apart."""

    source: str
    id: str
    name: str | None
    birth_date: str | None
    gender: str | None
    history_url: str


def _has_identifier(patient: dict[str, Any], wanted: str) -> bool:
    system, _, value = wanted.rpartition("|")
    for ident in patient.get("identifier") or []:
        if not isinstance(ident, dict) or ident.get("value") != value:
            continue
        if not system or ident.get("system") == system:
            return True
    return False


def matches(patient: dict[str, Any], query: PatientQuery) -> bool:
    """True when the Patient resource satisfies every part of `query`."""
    if query.name is not None:
        words = name_words(patient)
        wanted = fold(query.name).split()
        if not wanted or not all(any(w.startswith(q) for w in words) for q in wanted):
            return False
    if query.birthdate is not None:
        if not str(patient.get("birthDate") or "").startswith(query.birthdate):
            return False
    return query.identifier is None or _has_identifier(patient, query.identifier)


def _match(stored: StoredResource) -> PatientMatch:
    fields = demographics([stored])
    return PatientMatch(
        source=stored.source,
        id=stored.id,
        name=fields["name"].value,
        birth_date=fields["birth_date"].value,
        gender=fields["gender"].value,
        history_url=f"/patients/{stored.source}/{stored.id}/history",
    )


def search_patients(store: Store, query: PatientQuery, limit: int = 50) -> list[PatientMatch]:
    """Stored Patients matching `query` (all sources), by name then source and id.

    Candidates come from the store's indexes, one read per part of the query (the identifier
    index for `system|value`, the search terms of `patients.terms` for the rest: each name
    word as a prefix, the birth date as a prefix, a bare identifier value exactly), their
    intersection is read, and each record is checked against the whole query.
    """
    system, _, value = (query.identifier or "").rpartition("|")
    parts: list[set[tuple[str, str]]] = []
    if system and value:
        parts.append(set(store.patients_with_identifier(system, value)))
    elif query.identifier is not None:
        parts.append(store.patients_with_term(IDENTIFIER + value, prefix=False))
    if query.birthdate is not None:
        parts.append(store.patients_with_term(BIRTH + query.birthdate, prefix=True))
    for word in sorted(set(fold(query.name or "").split()), key=len, reverse=True):
        parts.append(store.patients_with_term(NAME + word, prefix=True))
        if not parts[-1]:
            break
    records = sorted(set.intersection(*parts) if parts else set())
    candidates = store.get_resources([(source, "Patient", pid) for source, pid in records])
    found = [_match(p) for p in candidates if p is not None and matches(p.body, query)]
    found.sort(key=lambda m: (m.name or "", m.source, m.id))
    return found[:limit]
