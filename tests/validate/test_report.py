"""Tests for fhir_bridge.validate.report: validate a resource or Bundle file, one line per issue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_bridge.errors import ConfigError
from fhir_bridge.validate import ProfileSet
from fhir_bridge.validate.report import format_issues, validate_file
from tests.utils import ROOT, sample

PATIENT_PROFILE = "StructureDefinition-bridge-patient.json"


@pytest.fixture(scope="module")
def ps() -> ProfileSet:
    """The project's profiles/ folder, loaded once."""
    return ProfileSet.load(ROOT / "profiles")


@pytest.fixture(scope="module")
def patient(ps) -> dict[str, Any]:
    """The first sample Patient with no issue at all (some lack telecom: a warning)."""
    return next(p for p in sample("Patient") if not ps.check_all(p, [PATIENT_PROFILE]))


def write(tmp_path: Path, content: Any) -> Path:
    """`content` as a JSON file (a string is written as it is)."""
    path = tmp_path / "resource.json"
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")
    return path


def brief(issues: list[Any]) -> list[tuple[str, str, str]]:
    """(severity, code, expression) of every issue."""
    return [(i["severity"], i["code"], i["expression"]) for i in issues]


def test_clean_resource_has_no_issues(ps, tmp_path, patient):
    """A complete sample Patient validated with the Patient profile gives nothing."""
    assert validate_file(write(tmp_path, patient), ps, [PATIENT_PROFILE]) == []


def test_parse_core_and_profile_issues_together(ps, tmp_path, patient):
    """An impossible date (parse), gender "bogus" (core) and a photo (profile) all show."""
    patient = {
        **patient,
        "birthDate": "1970-02-30",
        "gender": "bogus",
        "photo": [{"contentType": "image/png"}],
    }
    issues = validate_file(write(tmp_path, patient), ps, [PATIENT_PROFILE])
    assert brief(issues) == [
        ("error", "value", "Patient.birthDate"),
        ("error", "code-invalid", "Patient.gender"),
        ("error", "structure", "Patient.photo"),
    ]
    assert "1970-02-30" not in json.dumps(issues)


def test_core_check_runs_without_profiles(ps, tmp_path):
    """With no --profile, the core bindings still catch gender "bogus"."""
    patient = {**sample("Patient")[0], "gender": "bogus"}
    assert brief(validate_file(write(tmp_path, patient), ps, [])) == [
        ("error", "code-invalid", "Patient.gender")
    ]


def test_bundle_entries_are_checked_with_entry_paths(ps, tmp_path, patient):
    """Each entry's issues point into Bundle.entry[n].resource; an empty entry is reported."""
    good = bad = patient
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": good},
            {"fullUrl": "urn:uuid:1"},
            {"resource": {**bad, "gender": "bogus", "birthDate": "1970-02-30"}},
            {"resource": {"resourceType": "Appointment", "id": "a", "status": "nope"}},
        ],
    }
    issues = validate_file(write(tmp_path, bundle), ps, [PATIENT_PROFILE])
    assert brief(issues) == [
        ("error", "required", "Bundle.entry[1].resource"),
        ("error", "value", "Bundle.entry[2].resource.birthDate"),
        ("error", "code-invalid", "Bundle.entry[2].resource.gender"),
        ("error", "required", "Bundle.entry[3].resource.participant"),
        ("error", "code-invalid", "Bundle.entry[3].resource.status"),
    ]


def test_bundle_with_entry_not_a_list(ps, tmp_path):
    """A Bundle whose entry is not a list is one structure issue."""
    issues = validate_file(write(tmp_path, {"resourceType": "Bundle", "entry": {}}), ps, [])
    assert brief(issues) == [("error", "structure", "Bundle.entry")]


def test_not_json_is_one_issue_with_its_position(ps, tmp_path):
    """A file that is not JSON gives one 'invalid' issue with line and column."""
    issues = validate_file(write(tmp_path, '{"resourceType": "Patient",\n  oops}'), ps, [])
    assert brief(issues) == [("error", "invalid", "")]
    assert issues[0]["diagnostics"].endswith("at line 2 column 3")


def test_not_a_resource_stops_after_the_parse_check(ps, tmp_path):
    """A JSON list or an unknown type gives the parse issue only."""
    assert brief(validate_file(write(tmp_path, [1, 2]), ps, [])) == [("error", "structure", "")]
    unknown = {"resourceType": "Pateint", "id": "x", "gender": "bogus"}
    assert brief(validate_file(write(tmp_path, unknown), ps, [])) == [
        ("error", "not-supported", "resourceType")
    ]


def test_unknown_profile_is_a_config_error(ps, tmp_path):
    """An unknown --profile fails before the file is read, naming the profile."""
    with pytest.raises(ConfigError, match=r"unknown profile.*nope\.json"):
        validate_file(tmp_path / "absent.json", ps, ["nope.json"])


def test_unreadable_file_raises_os_error(ps, tmp_path):
    """A missing file is the caller's error (FileNotFoundError), not an issue."""
    with pytest.raises(FileNotFoundError):
        validate_file(tmp_path / "absent.json", ps, [])


def test_hl7_example_reports_its_profile_reasons(ps):
    """The official f201 Patient shows its two profile errors and its one mustSupport gap."""
    path = ROOT / "tests/data/hl7/Patient/Patient-f201.json"
    assert format_issues(validate_file(path, ps, [PATIENT_PROFILE])).splitlines() == [
        "warning Patient.address[0].state: must-support element is absent (profile bridge-patient)",
        "error Patient.maritalStatus.coding[0].system: not the fixed value "
        '"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus" of profile bridge-patient',
        "error Patient.photo: too many: profile bridge-patient allows at most 0 (found 1)",
    ]


def test_format_issues_one_line_each():
    """format_issues writes `severity expression: message`, `(resource)` for no expression."""
    issues = [
        {"severity": "error", "code": "invalid", "expression": "", "diagnostics": "not JSON"},
        {
            "severity": "warning",
            "code": "incomplete",
            "expression": "Patient.birthDate",
            "diagnostics": "must-support element is absent (profile bridge-patient)",
        },
    ]
    assert format_issues(issues) == (
        "error (resource): not JSON\n"
        "warning Patient.birthDate: must-support element is absent (profile bridge-patient)"
    )
    assert format_issues([]) == ""
