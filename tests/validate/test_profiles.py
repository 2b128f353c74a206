"""Tests for fhir_bridge.validate.profiles: core bindings, the shipped profiles, loading errors."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_bridge.errors import ConfigError
from fhir_bridge.validate import ProfileSet
from fhir_bridge.validate.profiles import CORE_BINDINGS
from tests.utils import ROOT, sample

PROFILES_DIR = ROOT / "profiles"
HL7 = ROOT / "tests/data/hl7"
TYPES = ["Patient", "CarePlan", "Appointment", "MedicationStatement", "CoverageEligibilityRequest"]
PROFILES = [f"StructureDefinition-bridge-{t.lower()}.json" for t in TYPES]
BRIDGE = "http://fhir-bridge.example/StructureDefinition/"

# Why each official HL7 example that breaks a shipped profile is quarantined: (code, expression).
HL7_PROFILE_ERRORS: dict[str, list[tuple[str, str]]] = {
    "Appointment-examplereq": [("required", "Appointment.participant[1].actor")],
    "CarePlan-f001": [("required", "CarePlan.category")],
    "CarePlan-f002": [("required", "CarePlan.category")],
    "CarePlan-f003": [("required", "CarePlan.category")],
    "CarePlan-f201": [("value", "CarePlan.intent"), ("required", "CarePlan.category")],
    "CarePlan-f202": [("required", "CarePlan.category")],
    "CarePlan-f203": [("required", "CarePlan.category")],
    "CarePlan-gpvisit": [
        ("required", "CarePlan.category"),
        ("value", "CarePlan.activity[0].detail.code"),
        ("value", "CarePlan.activity[1].detail.code"),
    ],
    "CarePlan-integrate": [("required", "CarePlan.category")],
    "CarePlan-obesity-narrative": [("required", "CarePlan.category")],
    "CarePlan-preg": [
        ("required", "CarePlan.category"),
        ("value", "CarePlan.activity[1].detail.code"),
        ("value", "CarePlan.activity[2].detail.code"),
        ("value", "CarePlan.activity[3].detail.code"),
    ],
    "MedicationStatement-example003": [("value", "MedicationStatement.medicationCodeableConcept")],
    "MedicationStatement-example004": [("value", "MedicationStatement.medicationCodeableConcept")],
    "MedicationStatement-example005": [("value", "MedicationStatement.medicationCodeableConcept")],
    "MedicationStatement-example006": [("value", "MedicationStatement.medicationCodeableConcept")],
    "MedicationStatement-example007": [("required", "MedicationStatement.effective")],
    "Patient-ch-example": [
        ("required", "Patient.telecom[0].system"),
        ("required", "Patient.telecom[0].value"),
    ],
    "Patient-example": [
        ("required", "Patient.telecom[0].system"),
        ("required", "Patient.telecom[0].value"),
    ],
    "Patient-f001": [("required", "Patient.identifier[1].value")],
    "Patient-f201": [
        ("value", "Patient.maritalStatus.coding[0].system"),
        ("structure", "Patient.photo"),
    ],
    "Patient-ihe-pcd": [
        ("required", "Patient.identifier[0].system"),
        ("required", "Patient.gender"),
    ],
    "Patient-infant-fetal": [("required", "Patient.name")],
    "Patient-infant-mom": [("required", "Patient.identifier")],
    "Patient-newborn": [("required", "Patient.identifier"), ("required", "Patient.name")],
    "Patient-pat1": [("structure", "Patient.photo")],
    "Patient-pat2": [("structure", "Patient.photo")],
    "Patient-proband": [("required", "Patient.name")],
}


@pytest.fixture(scope="module")
def ps() -> ProfileSet:
    """The project's profiles/ folder, loaded once."""
    return ProfileSet.load(PROFILES_DIR)


def errors(issues: list[Any]) -> list[tuple[str, str]]:
    """(code, expression) of the error issues, in order."""
    return [(i["code"], i["expression"]) for i in issues if i["severity"] == "error"]


def brief(issues: list[Any]) -> list[tuple[str, str, str]]:
    """(severity, code, expression) of every issue, in order."""
    return [(i["severity"], i["code"], i["expression"]) for i in issues]


def clean(ps: ProfileSet, resource_type: str) -> dict[str, Any]:
    """A deep copy of the first sample resource of the type with no issue at all."""
    for resource in sample(resource_type):
        if not ps.check_all(resource, PROFILES):
            return copy.deepcopy(resource)
    raise AssertionError(f"no clean sample {resource_type}")


def _participant_with_type(resource: dict[str, Any]) -> int:
    return next(i for i, p in enumerate(resource["participant"]) if "type" in p)


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set the value at a path of keys and list indexes."""
    target = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def hl7_examples() -> list[Path]:
    """Every official HL7 example file of the five types."""
    return sorted(HL7.glob("*/*.json"))


def load_json(path: Path) -> dict[str, Any]:
    """One JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


# --- what is shipped ----------------------------------------------------------------------


def test_ships_one_profile_per_type(ps):
    """profiles/ holds exactly the five bridge profiles, one per type, and no skipped parts."""
    assert sorted((p.type, p.url) for p in ps.profiles) == sorted(
        (t, f"{BRIDGE}bridge-{t.lower()}") for t in TYPES
    )
    assert ps.notes == ()


# The R4B model lists each required code set; R4 (4.0.1) has the same codes for these.
VALUE_SET_FIELDS = {
    "administrative-gender": ("Patient", "gender"),
    "appointmentstatus": ("Appointment", "status"),
    "participationstatus": ("AppointmentParticipant", "status"),
    "participantrequired": ("AppointmentParticipant", "required"),
    "medication-statement-status": ("MedicationStatement", "status"),
    "request-status": ("CarePlan", "status"),
    "care-plan-intent": ("CarePlan", "intent"),
    "care-plan-activity-status": ("CarePlanActivityDetail", "status"),
    "care-plan-activity-kind": ("CarePlanActivityDetail", "kind"),
    "fm-status": ("CoverageEligibilityRequest", "status"),
    "eligibilityrequest-purpose": ("CoverageEligibilityRequest", "purpose"),
    "name-use": ("HumanName", "use"),
    "contact-point-system": ("ContactPoint", "system"),
    "contact-point-use": ("ContactPoint", "use"),
    "address-use": ("Address", "use"),
    "address-type": ("Address", "type"),
    "identifier-use": ("Identifier", "use"),
    "link-type": ("PatientLink", "type"),
    "narrative-status": ("Narrative", "status"),
    "units-of-time": ("TimingRepeat", "periodUnit"),
    "days-of-week": ("TimingRepeat", "dayOfWeek"),
}


@pytest.mark.parametrize("vs_id", sorted(VALUE_SET_FIELDS))
def test_value_set_codes_match_the_fhir_model(ps, vs_id):
    """Each shipped required value set has exactly the codes the FHIR model enumerates."""
    model, field = VALUE_SET_FIELDS[vs_id]
    expected = get_fhir_model_class(model).model_fields[field].json_schema_extra["enum_values"]
    assert ps.value_sets[f"http://hl7.org/fhir/ValueSet/{vs_id}"].codes == set(expected)


def test_event_timing_has_both_code_systems(ps):
    """event-timing holds the 12 FHIR and 14 v3-TimingEvent codes, paired with their system."""
    vs = ps.value_sets["http://hl7.org/fhir/ValueSet/event-timing"]
    systems = Counter(system for system, _ in vs.pairs)
    assert systems == {
        "http://hl7.org/fhir/event-timing": 12,
        "http://terminology.hl7.org/CodeSystem/v3-TimingEvent": 14,
    }
    assert {"MORN.early", "HS", "ACM", "PHS"} <= vs.codes


def test_core_bindings_cover_every_shipped_value_set(ps):
    """Every shipped value set is used by the core check, and every core binding is shipped."""
    used = {vs for table in CORE_BINDINGS.values() for vs in table.values()}
    shipped = {url.rsplit("/", 1)[-1] for url in ps.value_sets}
    assert used == shipped
    assert set(CORE_BINDINGS) == set(TYPES)


# --- official examples and the sample population ------------------------------------------


@pytest.mark.parametrize("path", hl7_examples(), ids=lambda p: p.stem)
def test_hl7_examples_pass_core_bindings(ps, path):
    """Every official HL7 example of the five types meets the core required bindings."""
    assert ps.check_core(load_json(path)) == []


@pytest.mark.parametrize("path", hl7_examples(), ids=lambda p: p.stem)
def test_hl7_examples_against_the_profiles(ps, path):
    """An HL7 example either passes its type's profile or fails for the reasons listed."""
    issues = ps.check(load_json(path), PROFILES)
    assert errors(issues) == HL7_PROFILE_ERRORS.get(path.stem, [])


def test_hl7_expectations_name_real_files():
    """Every example named in HL7_PROFILE_ERRORS exists (a typo would hide a failure)."""
    stems = {p.stem for p in hl7_examples()}
    assert set(HL7_PROFILE_ERRORS) <= stems
    assert len(stems) == 45


@pytest.mark.parametrize("resource_type", TYPES)
def test_sample_population_passes_core_and_profiles(ps, resource_type):
    """No sample resource has a core or profile error."""
    resources = sample(resource_type)
    assert resources
    bad = {r["id"]: errors(i) for r in resources if errors(i := ps.check_all(r, PROFILES))}
    assert bad == {}


def test_sample_population_must_support_gaps(ps):
    """The sample's only warnings: 5 patients without telecom, 5 plans without activity, 31
    dosages without text."""
    found: Counter[tuple[str, str, str]] = Counter()
    for resource_type in TYPES:
        for resource in sample(resource_type):
            for issue in ps.check_all(resource, PROFILES):
                path = ".".join(p.split("[")[0] for p in issue["expression"].split("."))
                found[(issue["severity"], issue["code"], path)] += 1
    assert found == {
        ("warning", "incomplete", "Patient.telecom"): 5,
        ("warning", "incomplete", "CarePlan.activity"): 5,
        ("warning", "incomplete", "MedicationStatement.dosage.text"): 31,
    }


# --- core bindings ------------------------------------------------------------------------


def test_bogus_gender_caught_by_core(ps):
    """gender "bogus" is a code-invalid error at Patient.gender naming the value set."""
    patient = {**sample("Patient")[0], "gender": "bogus"}
    assert ps.check_core(patient) == [
        {
            "severity": "error",
            "code": "code-invalid",
            "expression": "Patient.gender",
            "diagnostics": "code 'bogus' is not in ValueSet administrative-gender",
        }
    ]


def test_bogus_gender_caught_by_patient_profile(ps):
    """The Patient profile's own required binding catches gender "bogus" too."""
    patient = {**sample("Patient")[0], "gender": "bogus"}
    assert errors(ps.check(patient, ["StructureDefinition-bridge-patient.json"])) == [
        ("code-invalid", "Patient.gender")
    ]


def test_check_all_reports_a_shared_binding_once(ps):
    """Core and profile both bind gender; check_all reports the bad code once."""
    patient = {**sample("Patient")[0], "gender": "bogus"}
    assert errors(ps.check_all(patient, PROFILES)) == [("code-invalid", "Patient.gender")]


def test_bogus_appointment_status_caught_by_core(ps):
    """Appointment.status "bogus" is caught without any profile."""
    appointment = {**sample("Appointment")[0], "status": "bogus"}
    issues = ps.check_core(appointment)
    assert errors(issues) == [("code-invalid", "Appointment.status")]
    assert issues[0]["diagnostics"] == "code 'bogus' is not in ValueSet appointmentstatus"


def test_core_expression_has_the_list_index(ps):
    """A bad participant status is reported at its index in the participant list."""
    appointment = copy.deepcopy(sample("Appointment")[0])
    appointment["participant"][1]["status"] = "maybe"
    assert errors(ps.check_core(appointment)) == [
        ("code-invalid", "Appointment.participant[1].status")
    ]


@pytest.mark.parametrize(
    ("resource_type", "path", "expression"),
    [
        ("Patient", ("telecom", 0, "system"), "Patient.telecom[0].system"),
        ("Patient", ("name", 0, "use"), "Patient.name[0].use"),
        ("Patient", ("address", 0, "use"), "Patient.address[0].use"),
        ("CarePlan", ("intent",), "CarePlan.intent"),
        ("CarePlan", ("activity", 0, "detail", "status"), "CarePlan.activity[0].detail.status"),
        ("MedicationStatement", ("status",), "MedicationStatement.status"),
        ("CoverageEligibilityRequest", ("status",), "CoverageEligibilityRequest.status"),
        ("CoverageEligibilityRequest", ("purpose", 0), "CoverageEligibilityRequest.purpose[0]"),
    ],
)
def test_core_catches_each_bound_element(ps, resource_type, path, expression):
    """A code outside the required value set is caught wherever the core binds one."""
    resource = copy.deepcopy(next(r for r in sample(resource_type) if path[0] in r))
    _set(resource, path, "bogus")
    assert errors(ps.check_core(resource)) == [("code-invalid", expression)]


def test_core_checks_timing_inside_dosage(ps):
    """A bad Timing.repeat.periodUnit inside a dosage is caught with its full path."""
    statement = load_json(HL7 / "MedicationStatement/MedicationStatement-example001.json")
    statement["dosage"][0]["timing"]["repeat"]["periodUnit"] = "fortnight"
    assert errors(ps.check_core(statement)) == [
        ("code-invalid", "MedicationStatement.dosage[0].timing.repeat.periodUnit")
    ]


def test_a_code_that_looks_like_a_name_is_not_quoted(ps):
    """A bound element holding free text says "a code (not shown)" and never the text."""
    patient = {**sample("Patient")[0], "gender": "Jane Q. Doe"}
    [issue] = ps.check_core(patient)
    assert issue["diagnostics"] == "a code (not shown) is not in ValueSet administrative-gender"
    assert "Jane" not in json.dumps(issue)


def test_types_outside_the_core_table_and_non_objects_give_nothing(ps):
    """check_core ignores other types and garbage; the parse check reports those."""
    assert ps.check_core({"resourceType": "Organization", "id": "o", "active": "bogus"}) == []
    assert ps.check_core(["not", "a", "resource"]) == []
    assert ps.check_core({"gender": "bogus"}) == []


def test_wrong_json_types_do_not_crash(ps):
    """Lists where objects belong, and numbers where codes belong, are left to the parse check."""
    patient = {"resourceType": "Patient", "id": "p", "name": "Doe", "gender": 7, "telecom": [3]}
    assert ps.check_core(patient) == []
    assert errors(ps.check(patient, PROFILES)) == [("required", "Patient.identifier")]


# --- each profile rejects each kind of violation ------------------------------------------


SNOMED_CC = {"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]}
OTHER_CODING = {"system": "http://example.org/codes", "code": "x"}
ATTENDER = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}
    ]
}

VIOLATIONS: list[tuple[str, str, Any, tuple[str, str, str]]] = [
    # (type, kind, mutate(resource) -> None, expected (severity, code, expression))
    ("Patient", "min", lambda r: r.pop("name"), ("error", "required", "Patient.name")),
    (
        "Patient",
        "max",
        lambda r: r.update(photo=[{"contentType": "image/png"}]),
        ("error", "structure", "Patient.photo"),
    ),
    (
        "Patient",
        "fixed",
        lambda r: r.update(maritalStatus={"coding": [OTHER_CODING]}),
        ("error", "value", "Patient.maritalStatus.coding[0].system"),
    ),
    (
        "Patient",
        "pattern",
        lambda r: _set(r, ("communication", 0, "language"), {"text": "English"}),
        ("error", "value", "Patient.communication[0].language"),
    ),
    (
        "Patient",
        "binding",
        lambda r: _set(r, ("telecom", 0, "use"), "cell"),
        ("error", "code-invalid", "Patient.telecom[0].use"),
    ),
    (
        "Patient",
        "mustSupport",
        lambda r: r.pop("birthDate"),
        ("warning", "incomplete", "Patient.birthDate"),
    ),
    ("CarePlan", "min", lambda r: r.pop("category"), ("error", "required", "CarePlan.category")),
    (
        "CarePlan",
        "max",
        lambda r: r["careTeam"].append({"reference": "CareTeam/2"}),
        ("error", "structure", "CarePlan.careTeam"),
    ),
    (
        "CarePlan",
        "fixed",
        lambda r: r.update(intent="order"),
        ("error", "value", "CarePlan.intent"),
    ),
    (
        "CarePlan",
        "pattern",
        lambda r: _set(r, ("activity", 0, "detail", "code"), {"coding": [OTHER_CODING]}),
        ("error", "value", "CarePlan.activity[0].detail.code"),
    ),
    (
        "CarePlan",
        "binding",
        lambda r: _set(r, ("activity", 0, "detail", "status"), "paused"),
        ("error", "code-invalid", "CarePlan.activity[0].detail.status"),
    ),
    (
        "CarePlan",
        "mustSupport",
        lambda r: r.pop("period"),
        ("warning", "incomplete", "CarePlan.period"),
    ),
    (
        "Appointment",
        "min",
        lambda r: r["participant"][0].pop("actor"),
        ("error", "required", "Appointment.participant[0].actor"),
    ),
    (
        "Appointment",
        "max",
        lambda r: r["participant"][_participant_with_type(r)]["type"].append(ATTENDER),
        ("error", "structure", "Appointment.participant[{t}].type"),
    ),
    (
        "Appointment",
        "fixed",
        lambda r: _set(
            r, ("participant", _participant_with_type(r), "type", 0), {"coding": [OTHER_CODING]}
        ),
        ("error", "value", "Appointment.participant[{t}].type[0].coding[0].system"),
    ),
    (
        "Appointment",
        "pattern",
        lambda r: r.update(appointmentType=SNOMED_CC),
        ("error", "value", "Appointment.appointmentType"),
    ),
    (
        "Appointment",
        "binding",
        lambda r: _set(r, ("participant", 0, "required"), "mandatory"),
        ("error", "code-invalid", "Appointment.participant[0].required"),
    ),
    (
        "Appointment",
        "mustSupport",
        lambda r: r.pop("end"),
        ("warning", "incomplete", "Appointment.end"),
    ),
    (
        "MedicationStatement",
        "min",
        lambda r: r.pop("effectivePeriod"),
        ("error", "required", "MedicationStatement.effective"),
    ),
    (
        "MedicationStatement",
        "max",
        lambda r: r["basedOn"].append({"reference": "MedicationRequest/2"}),
        ("error", "structure", "MedicationStatement.basedOn"),
    ),
    (
        "MedicationStatement",
        "fixed",
        lambda r: r.update(category={"coding": [OTHER_CODING]}),
        ("error", "value", "MedicationStatement.category.coding[0].system"),
    ),
    (
        "MedicationStatement",
        "pattern",
        lambda r: r.update(medicationCodeableConcept=SNOMED_CC),
        ("error", "value", "MedicationStatement.medicationCodeableConcept"),
    ),
    (
        "MedicationStatement",
        "binding",
        lambda r: r.update(status="paused"),
        ("error", "code-invalid", "MedicationStatement.status"),
    ),
    (
        "MedicationStatement",
        "mustSupport",
        lambda r: r.pop("dateAsserted"),
        ("warning", "incomplete", "MedicationStatement.dateAsserted"),
    ),
    (
        "CoverageEligibilityRequest",
        "min",
        lambda r: r.pop("insurance"),
        ("error", "required", "CoverageEligibilityRequest.insurance"),
    ),
    (
        "CoverageEligibilityRequest",
        "max",
        lambda r: r["insurance"].append({"coverage": {"reference": "Coverage/2"}}),
        ("error", "structure", "CoverageEligibilityRequest.insurance"),
    ),
    (
        "CoverageEligibilityRequest",
        "fixed",
        lambda r: r.update(priority={"coding": [OTHER_CODING]}),
        ("error", "value", "CoverageEligibilityRequest.priority.coding[0].system"),
    ),
    (
        "CoverageEligibilityRequest",
        "pattern",
        lambda r: _set(r, ("item", 0, "category"), SNOMED_CC),
        ("error", "value", "CoverageEligibilityRequest.item[0].category"),
    ),
    (
        "CoverageEligibilityRequest",
        "binding",
        lambda r: r["purpose"].append("everything"),
        ("error", "code-invalid", "CoverageEligibilityRequest.purpose[{last}]"),
    ),
    (
        "CoverageEligibilityRequest",
        "mustSupport",
        lambda r: r.pop("created"),
        ("warning", "incomplete", "CoverageEligibilityRequest.created"),
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "kind", "mutate", "expected"),
    VIOLATIONS,
    ids=[f"{t}-{k}" for t, k, _, _ in VIOLATIONS],
)
def test_profile_rejects_each_kind_of_violation(ps, resource_type, kind, mutate, expected):
    """One hand-made violation gives exactly one issue, of the right kind, at the right element."""
    resource = clean(ps, resource_type)
    mutate(resource)
    severity, code, expression = expected
    if resource_type == "Appointment":
        expression = expression.format(t=_participant_with_type(resource))
    if "{last}" in expression:
        expression = expression.format(last=len(resource["purpose"]) - 1)
    profile = f"StructureDefinition-bridge-{resource_type.lower()}.json"
    assert brief(ps.check(resource, [profile])) == [(severity, code, expression)]


def test_every_profile_has_every_kind_of_violation_tested():
    """The table above covers min, max, fixed, pattern, binding and mustSupport for all types."""
    kinds = {"min", "max", "fixed", "pattern", "binding", "mustSupport"}
    assert Counter((t, k) for t, k, _, _ in VIOLATIONS) == {(t, k): 1 for t in TYPES for k in kinds}


def test_messages_name_the_profile_and_its_own_values(ps):
    """Messages name the profile and quote the profile's fixed value, never the resource's."""
    careplan = clean(ps, "CarePlan")
    careplan["intent"] = "order"
    careplan.pop("category")
    issues = ps.check(careplan, ["StructureDefinition-bridge-careplan.json"])
    assert [i["diagnostics"] for i in issues] == [
        'not the fixed value "plan" of profile bridge-careplan',
        "missing: profile bridge-careplan requires at least 1 (found 0)",
    ]


def test_a_profile_applies_only_to_its_type(ps):
    """The Patient profile says nothing about an Appointment, however incomplete."""
    assert ps.check({"resourceType": "Appointment", "id": "a"}, PROFILES[:1]) == []


def test_extension_only_primitive_counts_as_present(ps):
    """gender given only as `_gender` (data-absent-reason) meets the profile's min 1."""
    patient = clean(ps, "Patient")
    patient.pop("gender")
    patient["_gender"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "asked-declined",
            }
        ]
    }
    assert ps.check(patient, PROFILES) == []


# --- naming profiles ----------------------------------------------------------------------


def test_profiles_are_named_by_url_version_or_file(ps):
    """A url, a url with |version, and a file name all name the same profile."""
    url = f"{BRIDGE}bridge-patient"
    found = ps.resolve([url, f"{url}|0.1.0", "StructureDefinition-bridge-patient.json"])
    assert {p.url for p in found} == {url}


def test_unknown_profile_is_a_config_error(ps):
    """An unknown profile name fails with the name and the loaded files listed."""
    with pytest.raises(
        ConfigError, match=r"unknown profile.*bridge-patients.*loaded: .*bridge-patient\.json"
    ):
        ps.check(sample("Patient")[0], ["bridge-patients"])


# --- hand-written profiles in a temporary folder -------------------------------------------


def profile_folder(tmp_path: Path, *extra: dict[str, Any]) -> Path:
    """A copy of profiles/ with `extra` resources written as their own files."""
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, folder)
    for n, resource in enumerate(extra):
        name = f"{resource['resourceType']}-extra{n}.json"
        (folder / name).write_text(json.dumps(resource), encoding="utf-8")
    return folder


def structure_definition(rtype: str, *elements: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A minimal differential StructureDefinition on `rtype`."""
    return {
        "resourceType": "StructureDefinition",
        "url": fields.pop("url", f"http://example.org/StructureDefinition/test-{rtype.lower()}"),
        "kind": "resource",
        "type": rtype,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "derivation": "constraint",
        "differential": {"element": [{"id": rtype, "path": rtype}, *elements]},
        **fields,
    }


def test_choice_type_restriction(tmp_path):
    """effective[x] limited to Period rejects effectiveDateTime at its concrete key."""
    sd = structure_definition(
        "MedicationStatement",
        {"id": "MedicationStatement.effective[x]", "type": [{"code": "Period"}]},
    )
    ps = ProfileSet.load(profile_folder(tmp_path, sd))
    statement = {"resourceType": "MedicationStatement", "id": "m", "effectiveDateTime": "2026"}
    [issue] = ps.check(statement, [sd["url"]])
    assert (issue["code"], issue["expression"]) == (
        "structure",
        "MedicationStatement.effectiveDateTime",
    )
    assert issue["diagnostics"] == (
        "type DateTime is not allowed by profile test-medicationstatement (allowed: Period)"
    )


def test_required_binding_on_codeable_concept_and_coding(tmp_path):
    """A CodeableConcept needs one coding in the value set; a Coding must match system and code."""
    sd = structure_definition(
        "Patient",
        {
            "id": "Patient.maritalStatus",
            "binding": {"strength": "required", "valueSet": "http://example.org/vs/marital"},
        },
        {
            "id": "Patient.communication.language.coding",
            "binding": {"strength": "required", "valueSet": "http://example.org/vs/marital"},
        },
    )
    vs = {
        "resourceType": "ValueSet",
        "url": "http://example.org/vs/marital",
        "expansion": {"contains": [{"system": "http://example.org/m", "code": "M"}]},
    }
    ps = ProfileSet.load(profile_folder(tmp_path, sd, vs))
    good = {"system": "http://example.org/m", "code": "M"}
    wrong_system = {"system": "http://example.org/other", "code": "M"}
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "maritalStatus": {"coding": [wrong_system, good]},
        "communication": [{"language": {"coding": [good, wrong_system]}}],
    }
    assert ps.check(patient, [sd["url"]]) == [
        {
            "severity": "error",
            "code": "code-invalid",
            "expression": "Patient.communication[0].language.coding[1]",
            "diagnostics": "the coding is not in ValueSet marital",
        }
    ]
    patient["maritalStatus"] = {"text": "married"}
    assert errors(ps.check(patient, [sd["url"]]))[0] == ("code-invalid", "Patient.maritalStatus")


def test_derived_profile_inherits_its_base(tmp_path):
    """A profile based on bridge-patient applies the base's rules and its own."""
    sd = structure_definition(
        "Patient",
        {"id": "Patient.birthDate", "min": 1},
        baseDefinition=f"{BRIDGE}bridge-patient",
    )
    ps = ProfileSet.load(profile_folder(tmp_path, sd))
    patient = {"resourceType": "Patient", "id": "p", "gender": "female"}
    assert errors(ps.check(patient, [sd["url"]])) == [
        ("required", "Patient.identifier"),
        ("required", "Patient.name"),
        ("required", "Patient.birthDate"),
    ]


def test_slices_and_invariants_are_skipped_with_a_note(tmp_path):
    """A sliced element is not checked and both it and an invariant are listed in notes."""
    sd = structure_definition(
        "Patient",
        {
            "id": "Patient.identifier:mrn",
            "path": "Patient.identifier",
            "sliceName": "mrn",
            "min": 1,
        },
        {"id": "Patient.name", "constraint": [{"key": "x-1", "expression": "family.exists()"}]},
    )
    ps = ProfileSet.load(profile_folder(tmp_path, sd))
    assert ps.check({"resourceType": "Patient", "id": "p"}, [sd["url"]]) == []
    assert ps.notes == (
        "StructureDefinition-extra0.json: Patient.identifier:mrn is a slice, not checked",
        "StructureDefinition-extra0.json: invariants on Patient.name are not checked",
    )


def test_value_set_including_a_whole_code_system(tmp_path):
    """A compose.include of a whole system takes the codes of the CodeSystem in the folder."""
    cs = {
        "resourceType": "CodeSystem",
        "url": "http://example.org/cs",
        "concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}],
    }
    vs = {
        "resourceType": "ValueSet",
        "url": "http://example.org/vs/all",
        "compose": {"include": [{"system": "http://example.org/cs"}]},
    }
    ps = ProfileSet.load(profile_folder(tmp_path, cs, vs))
    assert ps.value_sets["http://example.org/vs/all"].codes == {"a", "a1", "b"}


def test_other_resources_and_extension_definitions_are_skipped(tmp_path):
    """An ImplementationGuide and an extension definition are skipped with a note."""
    ig = {"resourceType": "ImplementationGuide", "url": "http://example.org/ig"}
    ext = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/ext",
        "kind": "complex-type",
    }
    ps = ProfileSet.load(profile_folder(tmp_path, ig, ext))
    assert ps.notes == (
        "ImplementationGuide-extra0.json: ImplementationGuide resources are not read",
        "StructureDefinition-extra1.json: not a resource profile, not read",
    )


# --- broken files -------------------------------------------------------------------------


def _patient_sd(element: dict[str, Any]) -> dict[str, Any]:
    return structure_definition("Patient", element)


def _value_set(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": "http://example.org/vs/broken", **fields}


def _required(url: str) -> dict[str, Any]:
    return {"strength": "required", "valueSet": url}


NAME = "Patient.name"
GENDER = "Patient.gender"
BROKEN: list[tuple[str, Any, str]] = [
    ("not JSON", "{ nope", "not JSON: Expecting property name enclosed in double quotes at line 1"),
    ("no resourceType", {"url": "x"}, "not a FHIR resource"),
    ("max not a number", _patient_sd({"id": NAME, "max": "many"}), f"element {NAME}: max must be"),
    (
        "min above max",
        _patient_sd({"id": NAME, "min": 2, "max": "1"}),
        f"element {NAME}: min 2 is above max 1",
    ),
    ("negative min", _patient_sd({"id": NAME, "min": -1}), f"element {NAME}: min must be a whole"),
    (
        "two fixed values",
        _patient_sd({"id": GENDER, "fixedCode": "male", "fixedString": "x"}),
        "more than one fixed[x]",
    ),
    (
        "missing value set",
        _patient_sd({"id": GENDER, "binding": _required("http://example.org/vs/none")}),
        "ValueSet http://example.org/vs/none is not in the profiles folder",
    ),
    (
        "bad strength",
        _patient_sd({"id": GENDER, "binding": {"strength": "must"}}),
        "binding.strength must be",
    ),
    ("unknown type", structure_definition("Pateint"), "type Pateint is not a FHIR resource type"),
    (
        "foreign base",
        structure_definition("Patient", baseDefinition="http://example.org/us-core-patient"),
        "baseDefinition http://example.org/us-core-patient is neither",
    ),
    (
        "specialization",
        structure_definition("Patient", derivation="specialization"),
        "derivation must be 'constraint'",
    ),
    (
        "no differential",
        {**structure_definition("Patient"), "differential": None},
        "differential.element is missing",
    ),
    (
        "element of another type",
        _patient_sd({"id": "Person.name", "min": 1}),
        "id/path must start with Patient",
    ),
    (
        "duplicate url",
        structure_definition("Patient", url=f"{BRIDGE}bridge-patient"),
        "is also defined in",
    ),
    (
        "value set filter",
        _value_set(compose={"include": [{"system": "http://loinc.org", "filter": [{}]}]}),
        "filters and valueSet imports are not supported",
    ),
    (
        "value set of an absent code system",
        _value_set(compose={"include": [{"system": "http://example.org/absent"}]}),
        "no CodeSystem with that url is in the folder",
    ),
    ("empty value set", _value_set(), "a ValueSet needs expansion.contains or compose.include"),
]


@pytest.mark.parametrize(("what", "content", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_is_a_config_error_naming_it(tmp_path, what, content, message):
    """A broken file in the folder fails the load with the file's name and what is wrong."""
    folder = profile_folder(tmp_path)
    broken = folder / "broken.json"
    broken.write_text(
        content if isinstance(content, str) else json.dumps(content), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        ProfileSet.load(folder)
    assert str(caught.value).startswith(f"{broken}: ")
    assert message in str(caught.value)


def test_missing_core_value_set_is_a_config_error(tmp_path):
    """A folder without a value set the core check needs fails, naming the value set."""
    folder = profile_folder(tmp_path)
    (folder / "ValueSet-administrative-gender.json").unlink()
    with pytest.raises(ConfigError, match=r"core checks need .*: administrative-gender$"):
        ProfileSet.load(folder)


def test_missing_folder_is_a_config_error(tmp_path):
    """A profiles_dir that does not exist fails with its path."""
    with pytest.raises(ConfigError, match="nowhere: profiles folder not found"):
        ProfileSet.load(tmp_path / "nowhere")
