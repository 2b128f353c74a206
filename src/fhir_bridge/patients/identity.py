"""Cross-source patient identity: which stored Patient records are the same person.

Two records are linked when they carry the same identifier (system|value) in a system the
installation trusts (`patients.trusted_identifier_systems`, e.g. a shared MRN system), and
links are followed transitively. Every link says why it exists. Identifier values stay in
the records: explanations name the system only, so they can be shown and logged safely.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from fhir_bridge.store.base import Store, StoredResource


@dataclass(frozen=True, order=True)
class PatientRecord:
    """One Patient resource in one source."""

    source: str
    id: str

    @property
    def reference(self) -> str:
        """The relative reference resources of its source use (`Patient/<id>`)."""
        return f"Patient/{self.id}"


@dataclass(frozen=True)
class Link:
    """A record that belongs to the patient, and why.

    :param via: the record it was matched with (None for the record asked for).
    :param system: the trusted identifier system both records share (None for the anchor).
    """

    record: PatientRecord
    reason: str
    via: PatientRecord | None = None
    system: str | None = None


def trusted_identifiers(patient: dict[str, Any], trusted: Collection[str]) -> set[tuple[str, str]]:
    """The (system, value) pairs of a Patient whose system is trusted."""
    found = set()
    for ident in patient.get("identifier") or []:
        system, value = (ident or {}).get("system"), (ident or {}).get("value")
        if isinstance(system, str) and isinstance(value, str) and system in trusted and value:
            found.add((system, value))
    return found


def _by_identifier(
    patients: Iterable[StoredResource], trusted: Collection[str]
) -> tuple[dict[tuple[str, str], list[PatientRecord]], dict[PatientRecord, set[tuple[str, str]]]]:
    index: dict[tuple[str, str], list[PatientRecord]] = {}
    idents: dict[PatientRecord, set[tuple[str, str]]] = {}
    for stored in patients:
        record = PatientRecord(stored.source, stored.id)
        idents[record] = trusted_identifiers(stored.body, trusted)
        for key in idents[record]:
            index.setdefault(key, []).append(record)
    return index, idents


def linked_records(store: Store, anchor: PatientRecord, trusted: Collection[str]) -> list[Link]:
    """The anchor and every record linked to it (directly or through another linked record),
    anchor first, then in the order they were found; empty when the anchor is not stored.

    Reads every stored Patient: fine for a coordinator's request on thousands of patients;
    an identifier index in the store is the next step for more.
    """
    if store.get_resource(anchor.source, "Patient", anchor.id) is None:
        return []
    links = [Link(anchor, "the record asked for")]
    if not trusted:
        return links
    index, idents = _by_identifier(store.iter_resources("Patient"), trusted)
    seen, queue = {anchor}, [anchor]
    while queue:
        current = queue.pop(0)
        for key in sorted(idents.get(current, ())):
            for other in index[key]:
                if other in seen:
                    continue
                seen.add(other)
                queue.append(other)
                reason = (
                    f"same identifier in trusted system {key[0]} as "
                    f"{current.source}/{current.reference}"
                )
                links.append(Link(other, reason, via=current, system=key[0]))
    return links
