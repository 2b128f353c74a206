"""fhir_bridge.validate.speedups: the same findings as fhir_core's own validators, faster.

The reference is a child process with the speedups switched off: every HL7 example, the
sample population, and thousands of broken variants of the examples (each key removed in
turn, each value nulled, a null put in each list, an unknown key in each object, a number
for each string, two values of one choice element) must give the same issues, word for
word, in both.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.validate import speedups
from fhir_bridge.validate.parse import validate_resource
from tests.utils import ROOT, sample

HL7 = Path(__file__).parents[1] / "data/hl7"

# Two values for one choice element (or none for a required one), top level and nested.
CHOICES: list[tuple[str, dict[str, Any]]] = [
    ("Patient", {"deceasedBoolean": False, "deceasedDateTime": "2020-01-01"}),
    ("Patient", {"multipleBirthBoolean": True, "multipleBirthInteger": 2}),
    (
        "MedicationStatement",
        {"medicationCodeableConcept": {"text": "x"}, "medicationReference": {"reference": "M/1"}},
    ),
    ("MedicationStatement", {}),  # medication[x] is required: none given
    (
        "CarePlan",
        {
            "activity": [
                {
                    "detail": {
                        "status": "scheduled",
                        "scheduledString": "daily",
                        "scheduledPeriod": {},
                    }
                }
            ]
        },
    ),
    (
        "Appointment",
        {"status": "booked", "participant": [{"status": "accepted"}], "_status": {"id": "s"}},
    ),
]


def _choice_base(rtype: str) -> dict[str, Any]:
    return {"resourceType": rtype, "id": "c", "status": "active", "subject": {"reference": "P/1"}}


def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def _variants(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Broken copies of `resource`: each key removed, each value nulled, a null in each list,
    an unknown key in each object, a number for each string."""
    for path, node in list(_walk(resource)):
        if isinstance(node, dict):
            broken = copy.deepcopy(resource)
            _at(broken, path)["bogus"] = 1
            yield broken
        if isinstance(node, str) and path and path[-1] != "resourceType":
            broken = copy.deepcopy(resource)
            _at(broken, path[:-1])[path[-1]] = 7
            yield broken
        if isinstance(node, list):
            broken = copy.deepcopy(resource)
            _at(broken, path).append(None)
            yield broken
        if path and path[-1] != "resourceType":
            parent = path[:-1]
            broken = copy.deepcopy(resource)
            _at(broken, parent)[path[-1]] = None
            yield broken
            if isinstance(path[-1], str):
                broken = copy.deepcopy(resource)
                del _at(broken, parent)[path[-1]]
                yield broken


def corpus() -> list[tuple[dict[str, Any], str]]:
    """(resource, expected type) pairs: valid ones, then broken ones."""
    out: list[tuple[dict[str, Any], str]] = []
    for path in sorted(HL7.glob("*/*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        out.append((resource, path.parent.name))
        out.extend((broken, path.parent.name) for broken in _variants(resource))
    for rtype in DEFAULT_RESOURCE_TYPES:
        out.extend((r, rtype) for r in sample(rtype))
    out.extend((_choice_base(rtype) | fields, rtype) for rtype, fields in CHOICES)
    return out


def findings() -> list[Any]:
    """The issues of every corpus entry, as JSON-ready lists."""
    return [validate_resource(resource, rtype) for resource, rtype in corpus()]


def _reference() -> subprocess.Popen[str]:
    """`findings()` in a child process without the speedups (started, to run beside ours)."""
    env = os.environ | {speedups.ENV: "0"}
    code = (
        "import json, sys\n"
        "from fhir_bridge.validate import speedups\n"
        "from tests.validate.test_speedups import findings\n"
        "assert not speedups.installed()\n"
        "json.dump(findings(), sys.stdout)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_installed_for_the_pinned_fhir_core() -> None:
    """This process runs with the speedups, and the R4B models built after install use them."""
    from fhir.resources.R4B.humanname import HumanName
    from fhir.resources.R4B.patient import Patient

    assert speedups.installed()
    for model in (Patient, HumanName):
        bound = model.__pydantic_decorators__.model_validators["reject_null_complex_elements"]
        assert "install.<locals>" in bound.func.__qualname__


def test_same_findings_as_the_library() -> None:
    """Every corpus entry gives the same issues with and without the speedups."""
    child = _reference()
    ours = json.loads(json.dumps(findings()))
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    theirs = json.loads(out)
    assert len(ours) == len(theirs) > 3000
    broken = sum(1 for issues in theirs if issues)
    assert broken > 1000, "the broken variants must exercise the error paths"
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert differ == []


@pytest.mark.parametrize(("rtype", "fields"), CHOICES, ids=[c[0] for c in CHOICES])
def test_choice_and_required_errors_still_raised(rtype: str, fields: dict[str, Any]) -> None:
    """The handmade broken resources are rejected (by the library's own code behind ours)."""
    assert validate_resource(_choice_base(rtype) | fields, rtype)


def test_null_in_a_list_is_still_rejected() -> None:
    """A null among HumanNames is an error with the library's words; a null among given
    names (a primitive list, lined up with `_given`) is not."""
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "A"}, None]}
    [issue] = validate_resource(patient, "Patient")
    assert issue["expression"] == "Patient.name"
    assert "None is not allowed as an element of name" in issue["diagnostics"]
    given = {"resourceType": "Patient", "id": "p", "name": [{"given": ["A", None]}]}
    given["name"][0]["_given"] = [None, {"extension": [{"url": "u", "valueString": "x"}]}]
    assert validate_resource(given, "Patient") == []


def test_off_for_an_untested_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another fhir_core version, or the environment switch, leaves the library alone."""
    monkeypatch.setattr(speedups.metadata, "version", lambda name: "9.9.9")
    assert not speedups.wanted()
    monkeypatch.undo()
    assert speedups.wanted()
    monkeypatch.setenv(speedups.ENV, "off")
    assert not speedups.wanted()


# -- shared elements ----------------------------------------------------------------------------
def _coded(rtype: str, code: Any, subject: str = "Patient/1") -> dict[str, Any]:
    """An Observation-like resource with one coding (MedicationStatement: medication[x])."""
    coding = {"system": "http://snomed.info/sct", "code": code, "display": "Asthma"}
    return {
        "resourceType": rtype,
        "id": "m",
        "status": "active",
        "subject": {"reference": subject},
        "medicationCodeableConcept": {"coding": [coding]},
    }


def test_an_element_seen_before_is_shared_only_inside_sharing() -> None:
    """Under `sharing()` an equal element validated as the same class is one instance; models
    built elsewhere (a caller may keep and change them) never share one."""
    from fhir.resources.R4B.medicationstatement import MedicationStatement

    data = _coded("MedicationStatement", "195967001")
    with speedups.sharing():
        first = MedicationStatement.model_validate(data)
        second = MedicationStatement.model_validate(copy.deepcopy(data))
    assert first.medicationCodeableConcept is second.medicationCodeableConcept
    assert first.subject is second.subject
    third = MedicationStatement.model_validate(data)
    fourth = MedicationStatement.model_validate(data)
    assert third.medicationCodeableConcept is not fourth.medicationCodeableConcept
    assert third.medicationCodeableConcept is not first.medicationCodeableConcept


def test_only_passing_elements_are_remembered() -> None:
    """The same bad element twice is reported twice, in the library's words; a good element
    after its bad twin (same keys, one value changed) still passes, and the bad one after
    the good one still fails."""
    bad = _coded("MedicationStatement", 7)  # a number where a code belongs
    good = _coded("MedicationStatement", "195967001")
    first = validate_resource(bad, "MedicationStatement")
    assert first, "a number for a code is an error"
    assert validate_resource(copy.deepcopy(bad), "MedicationStatement") == first
    assert validate_resource(good, "MedicationStatement") == []
    assert validate_resource(bad, "MedicationStatement") == first
    expressions = {issue["expression"] for issue in first}
    assert expressions == {"MedicationStatement.medicationCodeableConcept.coding[0].code"}


def test_memo_counts_distinct_elements_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal resources add nothing to the memo; a null keeps an element out of it; it is
    emptied when full, so it never holds more than MEMO_LIMIT elements."""
    speedups.forget()
    validate_resource(_coded("MedicationStatement", "1"), "MedicationStatement")
    # The coding, the CodeableConcept around it, the subject Reference.
    assert speedups.memo_size() == 3
    validate_resource(_coded("MedicationStatement", "1"), "MedicationStatement")
    assert speedups.memo_size() == 3
    validate_resource(_coded("MedicationStatement", "1", "Patient/2"), "MedicationStatement")
    assert speedups.memo_size() == 4  # only the new subject
    nulled = _coded("MedicationStatement", "1", "Patient/3")
    nulled["subject"]["display"] = None
    assert validate_resource(nulled, "MedicationStatement") == []
    assert speedups.memo_size() == 4
    monkeypatch.setattr(speedups, "MEMO_LIMIT", 5)
    sizes = []
    for n in range(20):
        validate_resource(_coded("MedicationStatement", str(n)), "MedicationStatement")
        sizes.append(speedups.memo_size())
    assert max(sizes) <= 5
    assert min(sizes[4:]) < 5, "emptied when full"


def test_a_type_that_rarely_repeats_is_not_looked_up_until_probed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After PROBE lookups with under 1 in 16 found, a field's elements are validated straight
    (not remembered) for REPROBE more, then probed again; a field that repeats keeps its memo."""
    monkeypatch.setattr(speedups, "PROBE", 8)
    monkeypatch.setattr(speedups, "REPROBE", 20)
    speedups.forget()
    sizes = []
    for n in range(32):  # the same coding each time, a new subject each time
        resource = _coded("MedicationStatement", "1", f"Patient/{n}")
        assert validate_resource(resource, "MedicationStatement") == []
        sizes.append(speedups.memo_size())
    # The coding, its CodeableConcept, then one subject a resource for the first 8.
    assert sizes[:8] == list(range(3, 11))
    assert set(sizes[8:29]) == {10}, "subjects not remembered after 8 lookups, no hit"
    assert sizes[29:] == [11, 12, 13], "probed again after 20 more"
    bad = _coded("MedicationStatement", 7, "Patient/x")
    assert validate_resource(bad, "MedicationStatement"), "errors still found"
    speedups.forget()
