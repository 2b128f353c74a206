"""The compiled FHIRPath subset gives exactly what fhirpathpy gives, or steps aside."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

import fhir_bridge.mapping.expr as expr_module
from fhir_bridge.mapping import NoLookup, RuleSet
from fhir_bridge.mapping.expr import compile_expr
from fhir_bridge.mapping.fastpath import Fallback, compile_fast
from tests.utils import NOW, ROOT, sample

TYPES = ("Patient", "Appointment", "CarePlan", "MedicationStatement", "CoverageEligibilityRequest")


def hl7_examples(resource_type: str) -> list[dict]:
    """The official HL7 R4 examples of a type, kept in tests/data/hl7."""
    folder = ROOT / "tests" / "data" / "hl7" / resource_type
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    """The default rules."""
    return RuleSet.load(ROOT / "mappings")


def verdicts(rules: RuleSet, fast: bool, monkeypatch, now) -> list[tuple]:
    """Every rule's verdict on every sample and HL7 resource, with the fast path on or off."""
    monkeypatch.setattr(expr_module, "FAST_PATH", fast)
    store = [r for t in (*TYPES, "Coverage") for r in sample(t)]
    lookup = NoLookup(store)
    out = []
    for rtype in TYPES:
        for resource in sample(rtype) + hl7_examples(rtype):
            for rule in rules.for_type(rtype):
                ev = rule.evaluate(resource, "s", now, lookup)
                close = rule.close_case(ev)
                out.append((rule.id, resource.get("id"), ev.matched, ev.draft, close, ev.error))
    return out


@pytest.mark.parametrize("days", [0, 45, -400])
def test_every_default_rule_gives_the_same_tasks_both_ways(rules, monkeypatch, days):
    """Over the sample population and the HL7 examples, at three points in time, the compiled
    subset and fhirpathpy agree on every match, task draft (title, due, priority...) and
    close case."""
    now = NOW + timedelta(days=days)
    fast = verdicts(rules, True, monkeypatch, now)
    slow = verdicts(rules, False, monkeypatch, now)
    assert len(fast) > 2000
    assert sum(v[2] for v in fast) > 100, "enough matches to compare drafts"
    mismatches = [(f, s) for f, s in zip(fast, slow, strict=True) if f != s]
    assert mismatches == []


def test_every_default_expression_is_compiled(rules):
    """All FHIRPath of the default rules is inside the compiled subset."""
    missing = []
    for rule in rules.rules:
        exprs = [e for _, e in rule.lets] + [rule.when, rule.patient]
        exprs += [rule.due] if rule.due else []
        exprs += [w for _, _, w in rule.related if w]
        exprs += [c.condition for c in rule.close_cases if c.condition]
        for template in [rule.title, rule.description, *rule.labels]:
            if template is not None:
                exprs += [p for p in template.parts if not isinstance(p, str)]
        missing += [(rule.id, e.text) for e in exprs if e.fast is None]
    # message() (family rules) renders text only for a drafted task; its name/value arguments
    # are left to fhirpathpy.
    assert [m for m in missing if not m[1].startswith("message(")] == []


@pytest.mark.parametrize(
    "text",
    [
        "name.given[0]",
        "status is code",
        "-1 < 2",
        "extension('http://x').value",
        "active implies true",
    ],
)
def test_expressions_outside_the_subset_are_left_to_fhirpathpy(text):
    """Outside the subset nothing is compiled, and the expression still evaluates."""
    assert compile_fast(text, {}) is None
    compiled = compile_expr(text, None, [], {})
    assert compiled.fast is None
    compiled({"resourceType": "Patient", "name": [{"family": "x", "given": ["a"]}]}, {})


@pytest.mark.parametrize(
    ("text", "resource"),
    [
        ("birthDate < '2000-01-01T00:00:00Z'", {"birthDate": "1990-05"}),  # mixed precision
        ("name.family = 'x'", {"name": [{"family": "x"}, {"family": "y"}]}),  # not a singleton
        ("deceased = false", {"deceasedDateTime": "2020-01-01"}),  # a date compared to a boolean
    ],
)
def test_values_it_cannot_judge_fall_back_to_fhirpathpy(text, resource):
    """The compiled closure refuses (Fallback) and Expr asks fhirpathpy, which answers."""
    resource = {"resourceType": "Patient", **resource}
    fast = compile_fast(text, {})
    assert fast is not None
    with pytest.raises(Fallback):
        fast(resource, {})
    compiled = compile_expr(text, "Patient", [], {})
    slow = compiled.fn(resource, {})
    assert compiled(resource, {}) == slow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%now + 1 month", "2026-12-26T12:00:00.000+00:00"),
        ("'2026-01-31' + 1 month", "2026-02-28"),
        ("'2024-02-29' + 1 year", "2025-02-28"),
        ("'2026-03-01' - 1 day", "2026-02-28"),
        ("%now - 36 hours", "2026-11-25T00:00:00.000+00:00"),
    ],
)
def test_calendar_arithmetic(text, expected):
    """Dates move by calendar units, clamping to the month's last day like FHIRPath."""
    fast = compile_fast(text, {})
    assert fast is not None
    assert fast({}, {"now": NOW.isoformat()}) == [expected]


CONSTRUCTS = [
    "name.given.first()",
    "name.given.last()",
    "name.given.tail()",
    "name.given.count()",
    "name.where(use = 'official').family",
    "name.where(use in ('official' | 'usual')).given",
    "name.select(given)",
    "name.all(family.exists())",
    "telecom.exists(system = 'phone')",
    "telecom.where(system = 'email').empty()",
    "telecom.value.where(startsWith('(03)'))",
    "telecom.value.where(contains('@'))",
    "name.family.first().upper()",
    "name.family.first().lower().length()",
    "name.family.first().substring(1)",
    "name.family.first().substring(0, 2)",
    "gender = 'male' and active = true",
    "gender = 'male' or active.not()",
    "gender != 'female'",
    "gender in ('male' | 'other')",
    "(name.use | telecom.use).distinct().count()",
    "'Patient/' + id",
    "name.family.first() & ' (' & gender & ')'",
    "iif(active.exists(), 'known', 'unknown')",
    "iif(gender = 'male', name.given.first())",
    "birthDate < '1980-01-01'",
    "birthDate.toString()",
    "birthDate + 1 year",
    "identifier.where(system.endsWith('ssn')).value.exists()",
    "deceased.exists().not()",
    "link.other.reference",
    "Patient.name.given.first()",
    "maritalStatus.coding.code contains 'M'",
    "contact.relationship.coding.code.first()",
    "%context.id",
]


@pytest.mark.parametrize("text", CONSTRUCTS)
def test_each_construct_matches_fhirpathpy_on_the_hl7_patients(text):
    """Each supported construct, on every HL7 example Patient (multi-valued names, telecom,
    contacts), gives fhirpathpy's answer or steps aside."""
    compiled = compile_expr(text, "Patient", [], {})
    assert compiled.fast is not None, "the construct should be in the compiled subset"
    compared = 0
    for patient in hl7_examples("Patient"):
        if _has_primitive_extensions(patient):
            continue  # fhirpathpy mishandles them (see fastpath's docstring)
        try:
            fast = compiled.fast(patient, {})
        except Fallback:
            continue
        assert fast == compiled.fn(patient, {}), patient["id"]
        compared += 1
    assert compared >= 10, "most examples must be judged by the compiled subset"


def _has_primitive_extensions(value: object) -> bool:
    """True when a `_element` key (a primitive's extension) appears anywhere."""
    if isinstance(value, dict):
        return any(k.startswith("_") or _has_primitive_extensions(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_primitive_extensions(v) for v in value)
    return False
