"""Family contacts: who may be told about a patient's care, and coordinators' flags for
contacts no FHIR Consent covers (docs/family.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import ErrorBody
from fhir_bridge.patients.contacts import (
    FACT_KIND,
    Contact,
    fact_key,
    flag_value,
    record_contacts,
)

router = APIRouter(prefix="/family", tags=["family"])

SOURCE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
PATIENT_REF = r"^Patient/[A-Za-z0-9.-]{1,64}$"
CONTACT_REF = r"^(RelatedPerson/[A-Za-z0-9.-]{1,64}|Patient/[A-Za-z0-9.-]{1,64}/contact/\d{1,3})$"
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such patient or contact stored"},
    422: {"model": ErrorBody, "description": "malformed request"},
}


class SharingIn(BaseModel):
    """A coordinator's decision on telling one contact, for contacts no Consent covers."""

    source: str = Field(pattern=SOURCE, examples=["ehr"])
    patient: str = Field(pattern=PATIENT_REF, examples=["Patient/p1"])
    contact: str = Field(
        pattern=CONTACT_REF,
        description="RelatedPerson/<id>, or Patient/<id>/contact/<n> for a Patient.contact",
        examples=["RelatedPerson/rp1"],
    )
    authorized: bool | None = Field(
        description="true: the patient said they may be told; false: they may not; null: "
        "clear the flag (back to Consent, else not authorized)"
    )
    coordinator: str | None = Field(
        default=None, max_length=100, description="who decides (auth off); else the caller"
    )


class SharingOut(BaseModel):
    """The contact after the change: what rules and coordinators now see."""

    changed: bool
    contact: Contact


def _contacts(bridge: BridgeDep, source: str, patient: str) -> list[Contact]:
    patient_id = patient.removeprefix("Patient/")
    if bridge.store.get_resource(source, "Patient", patient_id) is None:
        raise HTTPException(404, f"no Patient {patient_id} stored from source {source!r}")
    return record_contacts(bridge.store, source, patient_id)


@router.get("/contacts", response_model=list[Contact], responses=_ERRORS)
def list_contacts(
    bridge: BridgeDep,
    source: Annotated[str, Query(pattern=SOURCE)],
    patient: Annotated[str, Query(pattern=PATIENT_REF, description="Patient/<id>")],
) -> list[Contact]:
    """The patient's contacts (RelatedPersons, then Patient.contact entries) with
    relationship, preferred channel, language, and whether sharing is authorized and why."""
    return _contacts(bridge, source, patient)


@router.post("/sharing", response_model=SharingOut, responses=_ERRORS)
def set_sharing(bridge: BridgeDep, request: Request, body: SharingIn) -> SharingOut:
    """Set or clear a coordinator's flag on one contact. An active Consent naming the
    contact still decides over the flag (the patient's own word wins)."""
    found = _contacts(bridge, body.source, body.patient)
    if not any(c.reference == body.contact for c in found):
        raise HTTPException(404, f"{body.contact} is not a contact of {body.patient}")
    principal = getattr(request.state, "principal", None)
    by = principal.subject if principal is not None else "anonymous"
    if not request.app.state.auth.enabled and body.coordinator:
        by = body.coordinator
    value = None
    if body.authorized is not None:
        value = flag_value(body.authorized, by, bridge.clock().isoformat())
    changed = bridge.store.put_fact(FACT_KIND, fact_key(body.source, body.contact), value)
    if changed:  # the family rules read the flag: open or close their tasks now
        bridge.ingestor.reevaluate_patient(body.source, body.patient)
    after = _contacts(bridge, body.source, body.patient)
    return SharingOut(
        changed=changed, contact=next(c for c in after if c.reference == body.contact)
    )
