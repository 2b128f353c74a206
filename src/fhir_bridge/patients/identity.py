"""Cross-source patient identity: which stored Patient records are the same person.

Two records are linked when they carry the same identifier (system|value) in a system the
installation trusts (`patients.trusted_identifier_systems`, e.g. a shared MRN system), and
links are followed transitively. An admin can decide by hand where identifiers are missing or
wrong (`decide`): "same person" links two records, "different persons" cuts the identifier
link between them; decisions are stored as facts (`store.put_fact`) and win over identifiers.
Every link says why it exists. Identifier values stay in the records: explanations name the
system only, so they can be shown and logged safely.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_bridge.store.base import PatientReads, Store


@dataclass(frozen=True, order=True)
class PatientRecord:
    """One Patient resource in one source."""

    source: str
    id: str

    @property
    def reference(self) -> str:
        """The relative reference resources of its source use (`Patient/<id>`)."""
        return f"Patient/{self.id}"

    @property
    def key(self) -> str:
        """`source/id`: unambiguous, as neither a source name nor a FHIR id holds a `/`."""
        return f"{self.source}/{self.id}"

    @classmethod
    def parse(cls, key: str) -> PatientRecord:
        """The record named `source/id`.

        :raises ValueError: not of that shape.
        """
        source, sep, patient_id = key.partition("/")
        if not sep or not source or not patient_id or "/" in patient_id:
            raise ValueError(f"expected SOURCE/PATIENT_ID, got {key!r}")
        return cls(source, patient_id)


LINK_FACT = "patient-link"  # the facts kind holding admins' decisions


@dataclass(frozen=True)
class Decision:
    """An admin's decision about two records: the same person (link) or not (separate)."""

    a: PatientRecord
    b: PatientRecord
    same_person: bool
    by: str
    at: datetime
    note: str | None = None

    @property
    def key(self) -> str:
        """The facts key of the pair, the same whichever way round it is given."""
        return pair_key(self.a, self.b)

    def to_json(self) -> dict[str, Any]:
        """The stored fact."""
        return {
            "a": self.a.key,
            "b": self.b.key,
            "same_person": self.same_person,
            "by": self.by,
            "at": self.at.isoformat(),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        """The decision a fact holds."""
        return cls(
            PatientRecord.parse(data["a"]),
            PatientRecord.parse(data["b"]),
            bool(data["same_person"]),
            str(data["by"]),
            datetime.fromisoformat(data["at"]),
            data.get("note"),
        )

    def explain(self) -> str:
        """Why the records are (not) one person, for the history (names the admin and date)."""
        verb = "linked" if self.same_person else "separated"
        return f"{verb} by {self.by} on {self.at.date().isoformat()}"


def pair_key(a: PatientRecord, b: PatientRecord) -> str:
    """`<first>|<second>` in sorted order, so a pair has one key."""
    first, second = sorted((a, b))
    return f"{first.key}|{second.key}"


def decide(store: Store, decision: Decision) -> None:
    """Record an admin's decision about two records (replacing any earlier one on them)."""
    if decision.a == decision.b:
        raise ValueError("a record is always the same person as itself")
    store.put_fact(LINK_FACT, decision.key, decision.to_json())


def forget(store: Store, a: PatientRecord, b: PatientRecord) -> bool:
    """Drop the decision about two records (identifiers decide again); False when none."""
    return store.put_fact(LINK_FACT, pair_key(a, b), None)


def decisions(store: Store) -> list[Decision]:
    """Every stored decision, by pair."""
    return [Decision.from_json(v) for v in store.list_facts(LINK_FACT).values()]


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


def linked_records(
    store: Store,
    anchor: PatientRecord,
    trusted: Collection[str],
    reads: PatientReads | None = None,
) -> list[Link]:
    """The anchor and every record linked to it (directly or through another linked record),
    anchor first, then in the order they were found; empty when the anchor is not stored.

    Edges are shared trusted identifiers, plus admins' "same person" decisions, minus their
    "different persons" decisions (which cut only the edge between those two records: when
    another path joins them, both still appear, each link naming its path).

    Costs one read of each linked record, one of the admins' decisions (`Store.list_facts`
    of their kind), and one identifier lookup (`Store.patients_with_identifier`, indexed) per
    trusted identifier of each linked record, whatever the number of stored patients; the
    anchor's `reads` (`Store.patient_reads` with `LINK_FACT`), when given, answer the first
    three.
    """
    first = reads.patient if reads else store.get_resource(anchor.source, "Patient", anchor.id)
    if first is None:
        return []
    links = [Link(anchor, "the record asked for")]
    facts = reads.facts if reads else store.list_facts(LINK_FACT)
    manual = [Decision.from_json(v) for v in facts.values()]
    if not trusted and not manual:
        return links
    separated = {d.key for d in manual if not d.same_person}
    joined: dict[PatientRecord, list[Decision]] = {}
    for d in manual:
        if d.same_person:
            joined.setdefault(d.a, []).append(d)
            joined.setdefault(d.b, []).append(d)

    def stored(record: PatientRecord) -> dict[str, Any] | None:
        found = store.get_resource(record.source, "Patient", record.id)
        return found.body if found is not None else None

    bodies = {anchor: first.body}
    seen, queue = {anchor}, [anchor]
    while queue:
        current = queue.pop(0)
        for d in joined.get(current, ()):
            other = d.b if d.a == current else d.a
            if other not in seen and (body := stored(other)) is not None:
                bodies[other] = body
                seen.add(other)
                queue.append(other)
                reason = f"{d.explain()} as the same person as {current.source}/{current.reference}"
                links.append(Link(other, reason, via=current))
        for key in sorted(trusted_identifiers(bodies[current], trusted)):
            known = reads.identifiers.get(key) if reads and current == anchor else None
            found = known if known is not None else store.patients_with_identifier(*key)
            for other in (PatientRecord(*r) for r in found):
                if other in seen or pair_key(current, other) in separated:
                    continue
                body = stored(other)
                if body is None:
                    continue
                bodies[other] = body
                seen.add(other)
                queue.append(other)
                reason = (
                    f"same identifier in trusted system {key[0]} as "
                    f"{current.source}/{current.reference}"
                )
                links.append(Link(other, reason, via=current, system=key[0]))
    return links
