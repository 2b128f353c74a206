"""Patients: search the stored records, one patient's consolidated history, and admins'
decisions on which records are one person."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter

from fhir_bridge.api import audit
from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import ErrorBody
from fhir_bridge.patients.history import PatientHistory, patient_history
from fhir_bridge.patients.identity import (
    Decision,
    PatientRecord,
    decide,
    decisions,
    forget,
    linked_records,
)
from fhir_bridge.patients.search import PatientMatch, PatientQuery, search_patients

router = APIRouter(prefix="/patients", tags=["patients"])
_HISTORY = TypeAdapter(PatientHistory)

_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such Patient stored"},
    422: {"model": ErrorBody, "description": "malformed request"},
}


@router.get("", response_model=list[PatientMatch], responses=_ERRORS)
def find_patients(
    bridge: BridgeDep,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    birthdate: Annotated[
        str | None, Query(pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$", description="YYYY[-MM[-DD]]")
    ] = None,
    identifier: Annotated[
        str | None, Query(min_length=1, max_length=300, description="system|value or value")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[PatientMatch]:
    """Stored Patient records of every source matching all the given parts (one needed)."""
    query = PatientQuery(name=name, birthdate=birthdate, identifier=identifier)
    if not query:
        raise RequestValidationError(
            [
                {
                    "loc": ("query",),
                    "msg": "give at least one of name, birthdate, identifier",
                    "type": "value_error",
                }
            ]
        )
    return search_patients(bridge.store, query, limit)


@router.get("/{source}/{patient_id}/history", response_model=PatientHistory, responses=_ERRORS)
def read_history(
    bridge: BridgeDep,
    request: Request,
    source: str,
    patient_id: str,
    raw: Annotated[bool, Query(description="include each resource's FHIR JSON")] = False,
) -> Response:
    """The patient's records in every source (linked by trusted identifiers, each link
    explained), demographics with conflicts, care plans, appointments, medications,
    coverage and tasks; each item names its source and version."""
    history = patient_history(
        bridge.store,
        PatientRecord(source, patient_id),
        bridge.settings.patients.trusted_identifier_systems,
        bridge.clock(),
        raw=raw,
    )
    if history is None:
        raise HTTPException(404, f"no Patient {patient_id} stored from source {source!r}")
    # Serialized here in one pydantic-core call: FastAPI's own path for a dataclass (asdict,
    # validate, encode) cost ~10 ms per history of a typical patient, more than building it.
    body = _HISTORY.dump_json(history)
    # The read is recorded here, in this worker thread, before the history leaves: the audit
    # middleware would need a thread hop of its own for it.
    intent = getattr(request.state, audit.AUDIT_STATE, None)
    if intent is not None:
        audit.write(intent, 200, bridge)
    return Response(body, media_type="application/json")


# -- admins' decisions: these records are (not) one person -----------------------------------
RECORD_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}/[A-Za-z0-9.-]{1,64}$"  # source name / FHIR id


class LinkDecisionIn(BaseModel):
    """Two stored Patient records and whether they are the same person."""

    a: str = Field(pattern=RECORD_KEY, description="SOURCE/PATIENT_ID", examples=["ehr/p1"])
    b: str = Field(pattern=RECORD_KEY, description="SOURCE/PATIENT_ID", examples=["clinic/c7"])
    same_person: bool = Field(
        description="true links them; false keeps them apart even when identifiers match"
    )
    note: str | None = Field(default=None, max_length=500, description="why (shown to admins)")


class LinkDecisionOut(BaseModel):
    """A stored decision."""

    a: str
    b: str
    same_person: bool
    by: str
    at: datetime
    note: str | None


class LinkDecisionResult(BaseModel):
    """The decision, and the records now linked to `a` with the reason for each."""

    decision: LinkDecisionOut
    linked: list[dict[str, str | None]]


def _out(d: Decision) -> LinkDecisionOut:
    return LinkDecisionOut(
        a=d.a.key, b=d.b.key, same_person=d.same_person, by=d.by, at=d.at, note=d.note
    )


def _stored(bridge: BridgeDep, key: str) -> PatientRecord:
    record = PatientRecord.parse(key)
    if bridge.store.get_resource(record.source, "Patient", record.id) is None:
        raise HTTPException(404, f"no Patient {record.id} stored from source {record.source!r}")
    return record


@router.get("/links", response_model=list[LinkDecisionOut], summary="Admins' link decisions")
def list_links(bridge: BridgeDep) -> list[LinkDecisionOut]:
    """Every decision an admin made about two records, by pair."""
    return [_out(d) for d in decisions(bridge.store)]


@router.post(
    "/links", response_model=LinkDecisionResult, responses=_ERRORS, summary="Link or separate"
)
def make_link(bridge: BridgeDep, request: Request, body: LinkDecisionIn) -> LinkDecisionResult:
    """Record that two stored records are one person (linked even without a shared trusted
    identifier) or two (their identifier link is cut); replaces an earlier decision on them."""
    a, b = _stored(bridge, body.a), _stored(bridge, body.b)
    if a == b:
        raise RequestValidationError(
            [{"loc": ("body", "b"), "msg": "must differ from a", "type": "value_error"}]
        )
    principal = getattr(request.state, "principal", None)
    by = principal.subject if principal is not None else "anonymous"
    decision = Decision(a, b, body.same_person, by, bridge.clock(), body.note)
    decide(bridge.store, decision)
    links = linked_records(bridge.store, a, bridge.settings.patients.trusted_identifier_systems)
    linked = [{"record": lk.record.key, "reason": lk.reason} for lk in links]
    return LinkDecisionResult(decision=_out(decision), linked=linked)


@router.delete("/links", responses=_ERRORS, summary="Forget a link decision")
def forget_link(
    bridge: BridgeDep,
    a: Annotated[str, Query(pattern=RECORD_KEY, description="SOURCE/PATIENT_ID")],
    b: Annotated[str, Query(pattern=RECORD_KEY, description="SOURCE/PATIENT_ID")],
) -> dict[str, bool]:
    """Drop the decision about two records: trusted identifiers decide again."""
    if not forget(bridge.store, PatientRecord.parse(a), PatientRecord.parse(b)):
        raise HTTPException(404, f"no link decision about {a} and {b}")
    return {"forgotten": True}
