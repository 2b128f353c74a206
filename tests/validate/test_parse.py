"""Tests for fhir_bridge.validate.parse: R4B parsing turned into OperationOutcome issues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_bridge.validate.parse import is_known_type, validate_resource
from tests.utils import sample

HL7 = Path(__file__).parents[1] / "data/hl7"
TYPES = ["Patient", "CarePlan", "Appointment", "MedicationStatement", "CoverageEligibilityRequest"]
ISSUE_KEYS = {"severity", "code", "expression", "diagnostics"}


@pytest.fixture(scope="module")
def patient() -> dict[str, Any]:
    """The first sample Patient."""
    return sample("Patient")[0]


def assert_no_value(issues: list[Any], value: str) -> None:
    """Fail when `value` appears anywhere in the issues."""
    assert issues, "expected at least one issue"
    for issue in issues:
        assert value not in json.dumps(issue, ensure_ascii=False)


@pytest.mark.parametrize("resource_type", TYPES)
def test_sample_resources_are_valid(resource_type):
    """Every sample resource of the five synced types gives no issues."""
    resources = sample(resource_type)
    assert resources
    bad = {r["id"]: issues for r in resources if (issues := validate_resource(r, resource_type))}
    assert bad == {}


@pytest.mark.parametrize("path", sorted(HL7.glob("*/*.json")), ids=lambda p: p.stem)
def test_hl7_examples_are_valid(path):
    """The HL7 example resources give no issues."""
    resource = json.loads(path.read_text(encoding="utf-8"))
    assert validate_resource(resource, path.parent.name) == []


def test_impossible_birth_date(patient):
    """birthDate 1970-02-30 is a value issue at Patient.birthDate that does not quote it."""
    issues = validate_resource({**patient, "birthDate": "1970-02-30"})
    assert [(i["code"], i["expression"]) for i in issues] == [("value", "Patient.birthDate")]
    assert_no_value(issues, "1970-02-30")


def test_unknown_element(patient):
    """An element R4B does not know is a structure issue at its path, value not quoted."""
    issues = validate_resource({**patient, "nickname": "Janie Doe-Smith"})
    assert [(i["code"], i["expression"]) for i in issues] == [("structure", "Patient.nickname")]
    assert_no_value(issues, "Janie Doe-Smith")


def test_nested_wrong_shape_has_indexed_expression(patient):
    """A nested error is located with list indexes, e.g. Patient.name[0].given."""
    issues = validate_resource({**patient, "name": [{"given": "Janie Doe-Smith"}]})
    assert [i["expression"] for i in issues] == ["Patient.name[0].given"]
    assert_no_value(issues, "Janie Doe-Smith")


def test_missing_resource_type(patient):
    """A resource without resourceType is a required issue at resourceType."""
    body = {k: v for k, v in patient.items() if k != "resourceType"}
    issues = validate_resource(body)
    assert [(i["code"], i["expression"]) for i in issues] == [("required", "resourceType")]
    assert_no_value(issues, patient["name"][0]["family"])


def test_unknown_resource_type():
    """A resourceType R4B does not know is not-supported, at resourceType."""
    issues = validate_resource({"resourceType": "Patientt", "id": "x", "name": "Jane Roe"})
    assert [(i["code"], i["expression"]) for i in issues] == [("not-supported", "resourceType")]
    assert_no_value(issues, "Jane Roe")


@pytest.mark.parametrize("datatype", ["HumanName", "Extension", "Reference"])
def test_datatype_is_not_a_resource_type(datatype):
    """A FHIR datatype name is not a resource type, neither for is_known_type nor validation."""
    assert not is_known_type(datatype)
    issues = validate_resource({"resourceType": datatype, "id": "x"})
    assert [(i["code"], i["expression"]) for i in issues] == [("not-supported", "resourceType")]


def test_resource_types_are_known():
    """The five synced types and Task are known resource types; a lower-case name is not."""
    assert all(is_known_type(t) for t in [*TYPES, "Task"])
    assert not is_known_type("patient")


@pytest.mark.parametrize("entry", [["Jane Roe"], "Jane Roe", 42, None])
def test_not_a_json_object(entry):
    """An entry that is not a JSON object is one structure issue with an empty expression."""
    issues = validate_resource(entry)
    assert [(i["code"], i["expression"]) for i in issues] == [("structure", "")]
    assert_no_value(issues, "Jane Roe")


def test_wrong_expected_type(patient):
    """A Patient where an Appointment was asked for is an invalid issue at resourceType."""
    issues = validate_resource(patient, "Appointment")
    assert [(i["code"], i["expression"]) for i in issues] == [("invalid", "resourceType")]
    assert "expected Appointment, got Patient" in issues[0]["diagnostics"]
    assert_no_value(issues, patient["birthDate"])


def test_missing_id(patient):
    """A resource without id (servers always give one) is a required issue at Patient.id."""
    body = {k: v for k, v in patient.items() if k != "id"}
    issues = validate_resource(body)
    assert [(i["code"], i["expression"]) for i in issues] == [("required", "Patient.id")]


def test_issues_are_operation_outcome_shaped(patient):
    """Each issue has exactly severity, code, expression and diagnostics; severity is error."""
    body = {k: v for k, v in patient.items() if k != "id"} | {"birthDate": "1970-02-30"}
    issues = validate_resource(body)
    assert len(issues) == 2
    for issue in issues:
        assert set(issue) == ISSUE_KEYS
        assert issue["severity"] == "error"
        assert issue["diagnostics"]
    assert_no_value(issues, "1970-02-30")


def test_library_crash_on_odd_input_is_an_issue(patient):
    """fhir.resources raises AttributeError (not a ValidationError) for a number as an
    Attachment.url: that is one issue, naming no value, not an exception that stops a page."""
    odd = dict(patient, photo=[{"contentType": "image/png", "url": 4242}])
    [issue] = validate_resource(odd, "Patient")
    assert issue["code"] == "exception" and issue["expression"] == "Patient"
    assert "AttributeError" in issue["diagnostics"]
    assert_no_value([issue], "4242")
