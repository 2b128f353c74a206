"""Patients: search the stored records, and one patient's consolidated history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import ErrorBody
from fhir_bridge.patients.history import PatientHistory, patient_history
from fhir_bridge.patients.identity import PatientRecord
from fhir_bridge.patients.search import PatientMatch, PatientQuery, search_patients

router = APIRouter(prefix="/patients", tags=["patients"])

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
    source: str,
    patient_id: str,
    raw: Annotated[bool, Query(description="include each resource's FHIR JSON")] = False,
) -> PatientHistory:
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
    return history
