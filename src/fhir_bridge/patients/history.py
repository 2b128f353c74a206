"""A patient's consolidated history across every connected source.

The view is assembled from `Store.resources_for_patient` for each linked record (see
`identity`): demographics field by field (conflicts between sources shown, never resolved
silently), care plans, appointments, medications, coverage and eligibility requests, and
the coordinator tasks about the patient, and the family contacts (`patients.contacts`) with
whether the patient authorized sharing with each. Every item names the source and version it came
from; a resource mirrored in two sources is listed once, with `also_in` naming the mirrors
(matched by identifier system|value when it has one, else by identical content).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_bridge.patients.contacts import Contact, contacts_among
from fhir_bridge.patients.identity import LINK_FACT, Link, PatientRecord, linked_records
from fhir_bridge.patients.text import concept_text
from fhir_bridge.store.base import PatientReads, Store, StoredResource
from fhir_bridge.tasks.model import Task

_ACTIVE_PLAN = {"active", "on-hold", "draft"}
_ACTIVE_MED = {"active", "intended", "on-hold"}
_BOOKABLE = {"proposed", "pending", "booked", "arrived", "checked-in", "waitlist"}


@dataclass
class HistoryItem:
    """One resource in the history, with where it came from and a plain-language summary."""

    source: str
    type: str
    id: str
    version_id: str | None
    last_updated: str | None
    status: str | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    also_in: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] | None = None


@dataclass
class TaskItem:
    """A coordinator task about the patient."""

    id: str
    source: str
    queue: str
    kind: str
    title: str
    status: str
    assignee: str | None
    due: datetime | None
    focus: str
    updated_at: datetime


@dataclass
class LinkOut:
    """A record of the patient and why it belongs to them."""

    source: str
    id: str
    reason: str
    via: str | None
    system: str | None


@dataclass
class Demographic:
    """One demographic field: the agreed value, or a conflict with every source's value."""

    value: str | None
    conflict: bool
    by_source: list[dict[str, Any]]


@dataclass
class PatientHistory:
    """The consolidated view of one patient."""

    patient: str
    links: list[LinkOut]
    demographics: dict[str, Demographic]
    care_plans: dict[str, list[HistoryItem]]
    appointments: dict[str, list[HistoryItem]]
    medications: dict[str, list[HistoryItem]]
    coverage: dict[str, list[HistoryItem]]
    other: list[HistoryItem]
    tasks: dict[str, list[TaskItem]]
    # Family contacts of every linked record, each with whether sharing is authorized and why.
    contacts: list[Contact] = field(default_factory=list)


# -- plain-language pieces -------------------------------------------------------------------


def _first_concept(concepts: Any) -> str | None:
    texts = [concept_text(c) for c in concepts or [] if concept_text(c)]
    # Categories often start with a generic code ("assess-plan"); the last one is the specific.
    return texts[-1] if texts else None


def _day(value: Any) -> str | None:
    return str(value)[:10] if value else None


def _care_plan(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    what = body.get("title") or _first_concept(body.get("category")) or "care plan"
    activities = [
        {
            "status": (a.get("detail") or {}).get("status"),
            "what": concept_text((a.get("detail") or {}).get("code")),
        }
        for a in body.get("activity") or []
        if isinstance(a, dict)
    ]
    period = body.get("period") or {}
    dates = f" from {_day(period.get('start'))}" if period.get("start") else ""
    dates += f" to {_day(period.get('end'))}" if period.get("end") else ""
    summary = f"{what} ({body.get('status')}){dates}, {len(activities)} activities"
    return summary, {"activities": activities, "period": period}


def _appointment(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    what = body.get("description") or _first_concept(body.get("serviceType")) or "appointment"
    when = body.get("start")
    summary = f"{what}, {body.get('status')}" + (f", on {_day(when)}" if when else "")
    return summary, {"start": when, "end": body.get("end")}


def _medication(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    what = concept_text(body.get("medicationCodeableConcept"))
    what = what or (body.get("medicationReference") or {}).get("display") or "medication"
    period = body.get("effectivePeriod") or {}
    summary = f"{what}, {body.get('status')}"
    if period.get("start"):
        summary += f" since {_day(period['start'])}"
    return summary, {"effective": period or body.get("effectiveDateTime")}


def _coverage(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    payors = [p.get("display") for p in body.get("payor") or [] if isinstance(p, dict)]
    plan = concept_text(body.get("type")) or "coverage"
    names = [
        c.get("name") for c in body.get("class") or [] if isinstance(c, dict) and c.get("name")
    ]
    summary = f"{names[0] if names else plan}, {body.get('status')}"
    if any(payors):
        summary += f", from {', '.join(p for p in payors if p)}"
    return summary, {"period": body.get("period") or {}}


def _eligibility(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    purpose = list(body.get("purpose") or [])
    kind = "authorization request" if "auth-requirements" in purpose else "eligibility request"
    insurer = (body.get("insurer") or {}).get("display")
    summary = f"{kind.capitalize()}, {body.get('status')}"
    summary += f", to {insurer}" if insurer else ""
    summary += f", created {_day(body.get('created'))}" if body.get("created") else ""
    return summary, {"purpose": purpose, "serviced": body.get("servicedDate")}


def _generic(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    status = f", {body['status']}" if body.get("status") else ""
    return f"{body.get('resourceType')}{status}", {}


_SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "CarePlan": _care_plan,
    "Appointment": _appointment,
    "MedicationStatement": _medication,
    "Coverage": _coverage,
    "CoverageEligibilityRequest": _eligibility,
}


def _item(stored: StoredResource, raw: bool) -> HistoryItem:
    summary, details = _SUMMARIES.get(stored.resource_type, _generic)(stored.body)
    status = stored.body.get("status")
    return HistoryItem(
        source=stored.source,
        type=stored.resource_type,
        id=stored.id,
        version_id=stored.version_id,
        last_updated=stored.last_updated,
        status=status if isinstance(status, str) else None,
        summary=summary,
        details=details,
        raw=stored.body if raw else None,
    )


# -- demographics ----------------------------------------------------------------------------


def _name(p: dict[str, Any]) -> str | None:
    names = [n for n in p.get("name") or [] if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if official is None:
        return None
    if official.get("text"):
        return str(official["text"])
    parts = [*(official.get("given") or []), official.get("family") or ""]
    return " ".join(str(x) for x in parts if x) or None


def _telecom(system: str) -> Callable[[dict[str, Any]], str | None]:
    def pick(p: dict[str, Any]) -> str | None:
        for t in p.get("telecom") or []:
            if isinstance(t, dict) and t.get("system") == system and t.get("value"):
                return str(t["value"])
        return None

    return pick


def _address(p: dict[str, Any]) -> str | None:
    for a in p.get("address") or []:
        if isinstance(a, dict):
            parts = [*(a.get("line") or []), a.get("city"), a.get("state"), a.get("postalCode")]
            return ", ".join(str(x) for x in parts if x) or None
    return None


_DEMOGRAPHICS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "name": _name,
    "birth_date": lambda p: p.get("birthDate"),
    "gender": lambda p: p.get("gender"),
    "phone": _telecom("phone"),
    "email": _telecom("email"),
    "address": _address,
}


def demographics(patients: Iterable[StoredResource]) -> dict[str, Demographic]:
    """Field by field across the patient's records: one value when they agree (or only one
    record has it), else a conflict listing every source's value."""
    records = list(patients)
    out = {}
    for name, pick in _DEMOGRAPHICS.items():
        by_source = [{"source": r.source, "id": r.id, "value": pick(r.body)} for r in records]
        values = {v["value"] for v in by_source if v["value"] is not None}
        agreed = next(iter(values)) if len(values) == 1 else None
        out[name] = Demographic(value=agreed, conflict=len(values) > 1, by_source=by_source)
    return out


# -- dedupe and grouping ---------------------------------------------------------------------


def _keys(stored: StoredResource) -> set[tuple[str, ...]]:
    idents: set[tuple[str, ...]] = {
        ("identifier", stored.resource_type, str(i.get("system")), str(i.get("value")))
        for i in stored.body.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    }
    return idents or {("content", stored.resource_type, stored.content_hash)}


def dedupe(resources: Iterable[StoredResource], raw: bool) -> list[HistoryItem]:
    """One item per resource, in the order given; a later resource sharing an identifier (or,
    without identifiers, the whole content) with an earlier one is recorded in its
    `also_in` instead of being listed again."""
    items: list[HistoryItem] = []
    owner: dict[tuple[str, ...], HistoryItem] = {}
    for stored in resources:
        keys = _keys(stored)
        first = next((owner[k] for k in keys if k in owner), None)
        if first is not None:
            mirror = {"source": stored.source, "id": stored.id, "version_id": stored.version_id}
            if mirror not in first.also_in and (stored.source, stored.id) != (
                first.source,
                first.id,
            ):
                first.also_in.append(mirror)
            for k in keys:
                owner.setdefault(k, first)
            continue
        item = _item(stored, raw)
        items.append(item)
        for k in keys:
            owner[k] = item
    return items


def _split(
    items: Iterable[HistoryItem], section: Callable[[HistoryItem], str], names: Iterable[str]
) -> dict[str, list[HistoryItem]]:
    out: dict[str, list[HistoryItem]] = {n: [] for n in names}
    for item in items:
        out[section(item)].append(item)
    return out


def _appointment_section(now: datetime) -> Callable[[HistoryItem], str]:
    def section(item: HistoryItem) -> str:
        if item.status == "noshow":
            return "missed"
        if item.status == "cancelled":
            return "cancelled"
        start = item.details.get("start")
        if item.status in _BOOKABLE and (not start or _after(start, now)):
            return "upcoming"
        return "past"

    return section


def _after(value: str, now: datetime) -> bool:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when.tzinfo is not None and when >= now


def _task_item(task: Task) -> TaskItem:
    return TaskItem(
        id=task.id,
        source=task.source,
        queue=task.queue,
        kind=task.kind,
        title=task.title,
        status=task.status.value,
        assignee=task.assignee,
        due=task.due,
        focus=task.focus,
        updated_at=task.updated_at,
    )


def _tasks(store: Store, records: list[PatientRecord], reads: PatientReads | None) -> list[Task]:
    tasks: list[Task] = []
    for n, record in enumerate(records):
        about = reads.tasks if reads and n == 0 else store.iter_tasks(patient=record.reference)
        tasks.extend(task for task in about if task.source == record.source)
    return tasks


def _reconciled(items: list[HistoryItem], tasks: list[Task]) -> None:
    """Mark each medication with when a coordinator last closed a medications task on it."""
    done: dict[tuple[str, str], Task] = {}
    for t in tasks:
        if t.queue == "medications" and t.status.value == "completed":
            key = (t.source, t.focus)
            if key not in done or done[key].updated_at < t.updated_at:
                done[key] = t
    for item in items:
        found = [
            done.get((s["source"], f"{item.type}/{s['id']}")) for s in [vars(item), *item.also_in]
        ]
        latest = max((t for t in found if t is not None), key=lambda t: t.updated_at, default=None)
        item.details["reconciled_at"] = latest.updated_at.isoformat() if latest else None
        item.details["reconciled_by"] = latest.assignee if latest else None


def patient_history(
    store: Store,
    anchor: PatientRecord,
    trusted: Collection[str],
    now: datetime,
    *,
    raw: bool = False,
) -> PatientHistory | None:
    """The consolidated history of the patient `anchor` is a record of; None when no such
    Patient is stored. Items are listed newest first within each section.

    Store reads, whatever the store's size: the links (`identity.linked_records`), then per
    linked record one read of its resources (`Store.resources_for_patient`, indexed) and one
    of its tasks, and a flag read per family contact no Consent decides. The anchor's reads
    and the first of its links' come together where the engine can (`Store.patient_reads`:
    one Redis round trip instead of six).
    """
    reads = store.patient_reads(anchor.source, anchor.id, LINK_FACT, sorted(trusted))
    links = linked_records(store, anchor, trusted, reads)
    if not links:
        return None
    records = [link.record for link in links]  # the anchor first
    order = {record: n for n, record in enumerate(records)}
    found = {
        rec: reads.resources
        if reads and n == 0
        else store.resources_for_patient(rec.source, rec.reference)
        for n, rec in enumerate(records)
    }
    resources = [r for rec in records for r in found[rec]]
    resources.sort(key=lambda r: (r.last_updated or "", r.source, r.id), reverse=True)
    # The record asked for wins a tie: its version is the one shown, the mirrors go in also_in.
    resources.sort(key=lambda r: r.source != anchor.source)
    patients = [r for r in resources if r.resource_type == "Patient"]
    items = dedupe([r for r in resources if r.resource_type != "Patient"], raw)
    by_type: dict[str, list[HistoryItem]] = {}
    for item in items:
        by_type.setdefault(item.type, []).append(item)
    tasks = _tasks(store, records, reads)
    meds = by_type.pop("MedicationStatement", [])
    by_type.pop("RelatedPerson", None)  # listed under `contacts`, with their authorization
    contacts = [c for rec in records for c in contacts_among(store, rec.source, rec.id, found[rec])]
    _reconciled(meds, tasks)
    active_tasks = [t for t in tasks if t.is_active]
    closed_tasks = [t for t in tasks if not t.is_active]
    return PatientHistory(
        patient=f"{anchor.source}/{anchor.reference}",
        links=[_link_out(link) for link in links],
        demographics=demographics(
            sorted(patients, key=lambda r: order[PatientRecord(r.source, r.id)])
        ),
        care_plans=_split(
            by_type.pop("CarePlan", []),
            lambda i: "active" if i.status in _ACTIVE_PLAN else "past",
            ("active", "past"),
        ),
        appointments=_split(
            by_type.pop("Appointment", []),
            _appointment_section(now),
            ("upcoming", "missed", "cancelled", "past"),
        ),
        medications=_split(
            meds,
            lambda i: "active" if i.status in _ACTIVE_MED else "stopped",
            ("active", "stopped"),
        ),
        coverage={
            "coverages": by_type.pop("Coverage", []),
            "eligibility_requests": by_type.pop("CoverageEligibilityRequest", []),
        },
        other=[i for rest in by_type.values() for i in rest],
        tasks={
            "open": [_task_item(t) for t in active_tasks],
            "closed": [_task_item(t) for t in closed_tasks],
        },
        contacts=contacts,
    )


def _link_out(link: Link) -> LinkOut:
    return LinkOut(
        source=link.record.source,
        id=link.record.id,
        reason=link.reason,
        via=f"{link.via.source}/{link.via.reference}" if link.via else None,
        system=link.system,
    )
