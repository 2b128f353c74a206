"""Tasks the default rules must open on the sample population, computed in plain Python.

Independent of the rule engine on purpose: each function restates a rule's product
definition (docs/mapping-reference.md, README) over the raw NDJSON, so a bug in the engine or
in a mapping file shows up as a count mismatch.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.utils import sample


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _patient(appointment: dict) -> str | None:
    for p in appointment.get("participant", []):
        ref = p.get("actor", {}).get("reference", "")
        if ref.startswith("Patient/"):
            return ref
    return None


def _patient_status(appointment: dict) -> str | None:
    for p in appointment.get("participant", []):
        if p.get("actor", {}).get("reference", "").startswith("Patient/"):
            return p.get("status")
    return None


def _deceased(patient: dict) -> bool:
    return bool(patient.get("deceasedBoolean")) or "deceasedDateTime" in patient


def consented_patients() -> set[str]:
    """Patients with a contact they authorized: an active privacy Consent permitting one of
    their RelatedPersons (coordinators' flags do not exist on a first load)."""
    relatives = {
        f"RelatedPerson/{r['id']}": r["patient"]["reference"]
        for r in sample("RelatedPerson")
        if r.get("active", True)
    }
    out = set()
    for c in sample("Consent"):
        scopes = {x.get("code") for x in c.get("scope", {}).get("coding", [])}
        provision = c.get("provision", {})
        if c["status"] != "active" or "patient-privacy" not in scopes:
            continue
        if provision.get("type", "permit") != "permit":
            continue
        for actor in provision.get("actor", []):
            ref = actor["reference"]["reference"]
            if relatives.get(ref) == c["patient"]["reference"]:
                out.add(c["patient"]["reference"])
    return out


def _effective(statement: dict, end: str) -> datetime | None:
    period = statement.get("effectivePeriod")
    if period is not None:
        return _at(period.get(end))
    return _at(statement.get("effectiveDateTime")) if end == "start" else None


def expected_family_tasks(now: datetime) -> dict[str, int]:
    """Active family tasks (mappings/family.yaml, docs/family.md) at `now`."""
    told = consented_patients()
    appointments = [a for a in sample("Appointment") if _patient(a) in told]
    statements = [s for s in sample("MedicationStatement") if s["subject"]["reference"] in told]
    lookback = now - timedelta(days=30)

    def start(a: dict) -> datetime | None:
        return _at(a.get("start"))

    def since(s: dict, end: str) -> bool:
        when = _effective(s, end)
        return when is not None and when >= lookback

    return {
        "family-appointment-booked": sum(
            a["status"] == "booked" and start(a) is not None and start(a) >= now
            for a in appointments
        ),
        "family-appointment-cancelled": sum(
            a["status"] == "cancelled" and start(a) is not None and start(a) >= now
            for a in appointments
        ),
        "family-appointment-missed": sum(
            a["status"] == "noshow" and start(a) is not None and start(a) >= lookback
            for a in appointments
        ),
        "family-medication-started": sum(
            s["status"] == "active" and since(s, "start") for s in statements
        ),
        "family-medication-stopped": sum(
            s["status"] == "stopped" and since(s, "end") for s in statements
        ),
        "family-authorization-decided": sum(
            r["status"] == "active"
            and "auth-requirements" in r["purpose"]
            and r["outcome"] == "complete"
            and r["patient"]["reference"] in told
            for r in sample("CoverageEligibilityResponse")
        ),
    }


def expected_active_tasks(now: datetime) -> dict[str, int]:
    """Active tasks per rule after one initial load of the sample population at `now`."""
    appointments = sample("Appointment")
    careplans = sample("CarePlan")
    statements = sample("MedicationStatement")
    requests = sample("CoverageEligibilityRequest")
    coverages = sample("Coverage")
    patients = sample("Patient")
    lookback = now - timedelta(days=30)

    def starts(a: dict) -> datetime | None:
        return _at(a.get("start"))

    booked_for_plan = {
        info["reference"]
        for a in appointments
        if a["status"] == "booked"
        for info in a.get("supportingInformation", [])
    }
    active_coverage = {
        c["beneficiary"]["reference"] for c in coverages if c.get("status") == "active"
    }
    has_request = {r["patient"]["reference"] for r in requests}
    active_cer = [r for r in requests if r["status"] == "active"]

    def waiting_activity(plan: dict) -> bool:
        return any(
            a.get("detail", {}).get("status") in ("not-started", "scheduled")
            for a in plan.get("activity", [])
        )

    return {
        "confirm-appointment": sum(
            (
                a["status"] in ("proposed", "pending")
                or (a["status"] == "booked" and _patient_status(a) in ("needs-action", "tentative"))
            )
            and (starts(a) is None or starts(a) >= now)
            for a in appointments
        ),
        "no-show-outreach": sum(
            a["status"] == "noshow" and starts(a) is not None and starts(a) >= lookback
            for a in appointments
        ),
        "reschedule-cancelled": sum(
            a["status"] == "cancelled" and (starts(a) is None or starts(a) >= lookback)
            for a in appointments
        ),
        "waitlist-follow-up": sum(a["status"] == "waitlist" for a in appointments),
        "pre-visit-coverage-check": sum(
            a["status"] == "booked"
            and starts(a) is not None
            and now <= starts(a) <= now + timedelta(days=7)
            and (_patient(a) not in active_coverage or _patient(a) not in has_request)
            for a in appointments
        ),
        "schedule-follow-up": sum(
            p["status"] == "active"
            and waiting_activity(p)
            and f"CarePlan/{p['id']}" not in booked_for_plan
            for p in careplans
        ),
        "care-plan-review": sum(
            p["status"] == "active"
            and "end" in p.get("period", {})
            and _at(p["period"]["end"]) < now
            for p in careplans
        ),
        "medication-reconciliation": sum(s["status"] in ("active", "intended") for s in statements),
        "confirm-stopped-medication": sum(
            s["status"] in ("stopped", "on-hold", "not-taken") for s in statements
        ),
        "verify-eligibility": sum(
            bool({"validation", "benefits"} & set(r.get("purpose", []))) for r in active_cer
        ),
        "prior-authorization": sum("auth-requirements" in r.get("purpose", []) for r in active_cer),
        "intake-review": 0,  # nobody is new during the source's first load
        "update-contact-details": sum(
            not any(
                t.get("system") in ("phone", "email") and t.get("value")
                for t in p.get("telecom", [])
            )
            and not _deceased(p)
            for p in patients
        ),
        **expected_family_tasks(now),
    }
