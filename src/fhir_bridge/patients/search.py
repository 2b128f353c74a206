"""Find stored Patient records by name, birth date or identifier, across every source.

Name matching ignores case and accents and wants every word of the query to start a word
of the name (given, family or text); a birth date matches exactly or by prefix (`1970`,
`1970-01`); an identifier is `system|value` or a bare value (any system).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fhir_bridge.patients.history import demographics
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


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _name_words(patient: dict[str, Any]) -> set[str]:
    words: set[str] = set()
    for n in patient.get("name") or []:
        if not isinstance(n, dict):
            continue
        parts = [n.get("text"), n.get("family"), *(n.get("given") or [])]
        for part in parts:
            if isinstance(part, str):
                words.update(_fold(part).split())
    return words


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
        words = _name_words(patient)
        wanted = _fold(query.name).split()
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

    With a `system|value` identifier the candidates come from the store's identifier index;
    otherwise every stored Patient is read (fine for thousands; a name index is next).
    """
    candidates: Iterable[StoredResource]
    system, _, value = (query.identifier or "").rpartition("|")
    if system and value:
        records = store.patients_with_identifier(system, value)
        candidates = (
            stored
            for source, pid in records
            if (stored := store.get_resource(source, "Patient", pid)) is not None
        )
    else:
        candidates = store.iter_resources("Patient")
    found = [_match(p) for p in candidates if matches(p.body, query)]
    found.sort(key=lambda m: (m.name or "", m.source, m.id))
    return found[:limit]
