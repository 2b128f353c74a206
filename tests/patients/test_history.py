"""The consolidated history: demographics with conflicts, sections, dedupe, sources."""

from __future__ import annotations

from fhir_bridge.patients.history import patient_history
from fhir_bridge.patients.identity import PatientRecord
from tests.patients.conftest import CLINIC_ID, MRN
from tests.utils import NOW

TRUSTED = (MRN, CLINIC_ID)


def history(store, source="ehr", pid="p1", **kw):
    """The history of one record at NOW with the MRN and clinic id trusted."""
    return patient_history(store, PatientRecord(source, pid), TRUSTED, NOW, **kw)


def test_demographics_show_conflicts_with_every_source(store):
    """Agreed fields have one value; the phone differs, so it is a conflict listing each."""
    view = history(store)
    assert (view.demographics["name"].value, view.demographics["name"].conflict) == (
        "Jane Roe",
        False,
    )
    phone = view.demographics["phone"]
    assert (phone.value, phone.conflict) == (None, True)
    assert [(v["source"], v["value"]) for v in phone.by_source] == [
        ("ehr", "555-0100"),
        ("clinic", "555-0199"),
        ("lab", "555-0100"),
    ]


def test_mirrored_resource_appears_once_with_its_mirror(store):
    """The eligibility request in ehr and clinic (same identifier) is listed once, from the
    record asked for, naming the clinic's copy and version."""
    view = history(store)
    (request,) = view.coverage["eligibility_requests"]
    assert (request.source, request.id, request.version_id) == ("ehr", "e1", "4")
    assert request.also_in == [{"source": "clinic", "id": "ce-77", "version_id": "2"}]
    from_clinic = history(store, "clinic", "c7").coverage["eligibility_requests"]
    assert [(r.source, r.id) for r in from_clinic] == [("clinic", "ce-77")]


def test_sections_split_by_status(store):
    """Care plans, appointments and medications land in the sections their status says."""
    view = history(store)
    assert [i.id for i in view.care_plans["active"]] == ["cp1"]
    assert [i.id for i in view.care_plans["past"]] == ["cp9"]
    assert {k: [i.id for i in v] for k, v in view.appointments.items()} == {
        "upcoming": ["a-up"],
        "missed": ["a-miss"],
        "cancelled": ["a-canc"],
        "past": ["a-done"],
    }
    assert [(i.source, i.id) for i in view.medications["active"]] == [("ehr", "m1")]
    assert [(i.source, i.id) for i in view.medications["stopped"]] == [("lab", "m2")]


def test_medication_reconciled_when_and_by_whom(store):
    """A completed medications task on a statement marks it reconciled, with when and who."""
    view = history(store)
    (m1,) = view.medications["active"]
    assert (m1.details["reconciled_at"], m1.details["reconciled_by"]) == (NOW.isoformat(), "alice")
    assert view.medications["stopped"][0].details["reconciled_at"] is None


def test_tasks_of_every_linked_record_only(store):
    """Open and closed tasks come from each linked (source, patient), never from z9."""
    view = history(store)
    assert [(t.source, t.status) for t in view.tasks["closed"]] == [("ehr", "completed")]
    assert [(t.source, t.focus) for t in view.tasks["open"]] == [("clinic", "Appointment/a-c")]


def test_unlinked_patient_resources_stay_out(store):
    """z9's care plan never appears in Jane's history, and z9's history holds only it."""
    everything = history(store)
    ids = [i.id for section in everything.care_plans.values() for i in section]
    assert "cp-z" not in ids
    assert [i.id for i in history(store, "lab", "z9").care_plans["active"]] == ["cp-z"]


def test_items_summarise_without_raw_fhir_unless_asked(store):
    """Each item carries a plain-language summary and no body; raw=True adds the body."""
    plan = history(store).care_plans["active"][0]
    assert plan.summary.startswith("Diabetes plan (active)") and plan.raw is None
    assert plan.type == "CarePlan" and plan.source == "ehr" and plan.version_id == "1"
    raw = history(store, raw=True).care_plans["active"][0]
    assert raw.raw["resourceType"] == "CarePlan"


def test_unknown_patient_has_no_history(store):
    """A record that is not stored gives None."""
    assert history(store, "ehr", "nope") is None
