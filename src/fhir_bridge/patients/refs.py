"""Which patient a resource is about, as a relative reference (`Patient/123`).

One table per resource type, because FHIR names the element differently in each: `subject`,
`patient`, `beneficiary`, or an `Appointment.participant` whose actor is a Patient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def _participants(resource: dict[str, Any]) -> str | None:
    for participant in resource.get("participant") or []:
        ref = _ref((participant or {}).get("actor"))
        if ref:
            return ref
    return None


_BY_TYPE: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "Patient": lambda r: f"Patient/{r['id']}" if r.get("id") else None,
    "Appointment": _participants,
    "AppointmentResponse": lambda r: _ref(r.get("actor")),
    "CarePlan": lambda r: _ref(r.get("subject")),
    "CareTeam": lambda r: _ref(r.get("subject")),
    "MedicationStatement": lambda r: _ref(r.get("subject")),
    "MedicationRequest": lambda r: _ref(r.get("subject")),
    "Coverage": lambda r: _ref(r.get("beneficiary")),
    "CoverageEligibilityRequest": lambda r: _ref(r.get("patient")),
    "CoverageEligibilityResponse": lambda r: _ref(r.get("patient")),
    "Condition": lambda r: _ref(r.get("subject")),
    "Encounter": lambda r: _ref(r.get("subject")),
    "Task": lambda r: _ref(r.get("for")),
    "RelatedPerson": lambda r: _ref(r.get("patient")),
    "Consent": lambda r: _ref(r.get("patient")),
    "Communication": lambda r: _ref(r.get("subject")),
}


def patient_reference(resource: dict[str, Any]) -> str | None:
    """The `Patient/<id>` a resource is about, or None (e.g. Practitioner, Organization)."""
    extract = _BY_TYPE.get(str(resource.get("resourceType")))
    return extract(resource) if extract else None
