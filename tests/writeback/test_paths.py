"""Tests for fhir_bridge.writeback.paths: dotted element paths with where() filters."""

from __future__ import annotations

import pytest

from fhir_bridge.writeback.paths import PathError, get_values, set_value

PATIENT_STATUS = "participant.where(actor.reference.startsWith('Patient/')).status"


def appointment() -> dict:
    """An Appointment with a patient and a practitioner participant."""
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
            {"actor": {"reference": "Patient/p1"}, "status": "needs-action"},
        ],
    }


def test_get_values_follows_filters():
    """A where() filter keeps only the matching repeating elements."""
    assert get_values(appointment(), PATIENT_STATUS) == ["needs-action"]
    assert get_values(appointment(), "participant.status") == ["accepted", "needs-action"]
    assert get_values(appointment(), "status") == ["proposed"]
    assert get_values(appointment(), "cancelationReason.text") == []


def test_set_value_only_on_matching_elements():
    """Setting through a filter changes the patient participant and leaves the other alone."""
    resource = appointment()
    assert set_value(resource, PATIENT_STATUS, "accepted") == 1
    assert [p["status"] for p in resource["participant"]] == ["accepted", "accepted"]
    resource["participant"][0]["status"] = "tentative"
    set_value(resource, PATIENT_STATUS, "declined")
    assert [p["status"] for p in resource["participant"]] == ["tentative", "declined"]


def test_set_value_creates_missing_elements_and_removes_on_none():
    """A missing element on an unfiltered path is created; None removes the last name."""
    resource = appointment()
    assert set_value(resource, "cancelationReason.text", "patient asked") == 1
    assert resource["cancelationReason"] == {"text": "patient asked"}
    set_value(resource, "status", None)
    assert "status" not in resource


def test_filter_matching_nothing_writes_nothing():
    """A filter that matches no element sets nothing and creates nothing."""
    resource = appointment()
    path = "participant.where(actor.reference.startsWith('Group/')).status"
    assert set_value(resource, path, "accepted") == 0
    assert resource == appointment()


@pytest.mark.parametrize(
    "path",
    ["status.where(true)", "participant.first().status", "where(true).status", "a.(b", ""],
)
def test_bad_paths_are_refused(path):
    """Functions other than where(), a trailing filter and broken syntax raise PathError."""
    with pytest.raises(PathError):
        set_value(appointment(), path, "x")
