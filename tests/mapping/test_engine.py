"""Tests for fhir_bridge.mapping.engine: loading rule files and turning resources into drafts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fhir_bridge.errors import MappingError
from fhir_bridge.mapping.engine import RuleSet
from fhir_bridge.tasks.model import Priority, task_id
from tests.utils import NOW, ROOT, sample

MAPPINGS = ROOT / "mappings"
SOURCE = "main-ehr"

NO_SHOW_ID = "e84176dd-6baa-5f29-bde1-8fb3d4b0c000"
PRIOR_AUTH_ID = "cb9b66bd-2fad-516b-b154-c23f180018ea"

VALID_RULE = """\
rules:
  - id: no-show
    resource: Appointment
    when: "status = 'noshow'"
    task:
      queue: scheduling
      kind: no-show
      title: "Missed {{ serviceType.coding.display.first() }}"
      due: "%now + 2 days"
      patient: "participant.actor.reference.where(startsWith('Patient/')).first()"
"""


def by_id(resource_type: str, resource_id: str) -> dict[str, Any]:
    """One sample resource by id."""
    return next(r for r in sample(resource_type) if r["id"] == resource_id)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    """The default mapping rules."""
    return RuleSet.load(MAPPINGS)


def write_rules(folder: Path, text: str, name: str = "rules.yaml") -> Path:
    """Write a mapping file into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def mapping_error(folder: Path) -> MappingError:
    """The MappingError that loading `folder` raises."""
    with pytest.raises(MappingError) as info:
        RuleSet.load(folder)
    return info.value


# -- the default mappings ------------------------------------------------------------------


def test_default_mappings_load(rules):
    """The default mapping files give the four rules, their resource types and queues."""
    assert sorted(r.id for r in rules.rules) == [
        "medication-reconciliation",
        "no-show-outreach",
        "prior-authorization",
        "verify-eligibility",
    ]
    assert rules.resource_types == {
        "Appointment",
        "CoverageEligibilityRequest",
        "MedicationStatement",
    }
    assert rules.queues == {"scheduling", "insurance", "medications"}


def expected_counts() -> Counter[str]:
    """Per rule, the sample resources it should match, counted with plain Python."""
    expected: Counter[str] = Counter()
    expected["no-show-outreach"] = sum(a["status"] == "noshow" for a in sample("Appointment"))
    for cer in sample("CoverageEligibilityRequest"):
        purpose = set(cer.get("purpose", []))
        if cer["status"] == "active" and purpose & {"validation", "benefits"}:
            expected["verify-eligibility"] += 1
        if cer["status"] == "active" and "auth-requirements" in purpose:
            expected["prior-authorization"] += 1
    expected["medication-reconciliation"] = sum(
        m["status"] == "active" for m in sample("MedicationStatement")
    )
    return expected


def test_drafts_per_rule_match_an_independent_count(rules):
    """Over the sample population, each rule drafts exactly the resources it describes."""
    drafted: Counter[str] = Counter()
    for rtype in ["Patient", "CarePlan", *sorted(rules.resource_types)]:
        for resource in sample(rtype):
            for draft in rules.evaluate(resource, SOURCE, NOW):
                drafted[draft.rule_id] += 1
    expected = expected_counts()
    assert all(n > 0 for n in expected.values())
    assert drafted == expected


def test_no_show_draft_is_filled_in(rules):
    """A no-show Appointment gives a draft with the patient, interpolated title and now+2d."""
    (draft,) = rules.evaluate(by_id("Appointment", NO_SHOW_ID), SOURCE, NOW)
    assert draft.rule_id == "no-show-outreach"
    assert draft.source == SOURCE
    assert (draft.focus_type, draft.focus_id) == ("Appointment", NO_SHOW_ID)
    assert draft.patient == "Patient/768d19b8-5e76-4cd6-a7bd-d43ae6df02bf"
    assert draft.queue == "scheduling"
    assert draft.kind == "no-show-outreach"
    assert draft.title == (
        "Reach out after a missed appointment: General examination of patient (procedure)"
    )
    assert draft.priority is Priority.URGENT
    assert draft.due == NOW + timedelta(days=2)
    assert draft.id == task_id("no-show-outreach", SOURCE, "Appointment", NO_SHOW_ID)


def test_prior_authorization_due_is_before_the_service_date(rules):
    """A prior-authorization draft is due 5 days before servicedDate (2026-12-16)."""
    cer = by_id("CoverageEligibilityRequest", PRIOR_AUTH_ID)
    (draft,) = rules.evaluate(cer, SOURCE, NOW)
    assert draft.rule_id == "prior-authorization"
    assert draft.patient == "Patient/a3fb8482-4839-4699-8034-cee2c7ee2b84"
    assert draft.title == "Check prior authorization for Follow-up encounter (procedure)"
    assert draft.due == datetime(2026, 12, 11, tzinfo=UTC)


def test_due_falls_back_to_now_without_a_service_date(rules):
    """Without servicedDate, a prior-authorization draft is due at now + 2 days."""
    cer = by_id("CoverageEligibilityRequest", PRIOR_AUTH_ID)
    del cer["servicedDate"]
    (draft,) = rules.evaluate(cer, SOURCE, NOW)
    assert draft.due == NOW + timedelta(days=2)


def test_focus_version_comes_from_meta(rules):
    """The draft carries the resource's meta.versionId."""
    appt = by_id("Appointment", NO_SHOW_ID)
    appt["meta"] = {**appt.get("meta", {}), "versionId": "7"}
    (draft,) = rules.evaluate(appt, SOURCE, NOW)
    assert draft.focus_version == "7"


def test_non_matching_resource_gives_reason(rules):
    """A fulfilled Appointment gives no draft and the reason that `when` is not true."""
    appt = {**by_id("Appointment", NO_SHOW_ID), "status": "fulfilled"}
    decisions = rules.decide(appt, SOURCE, NOW)
    assert [(d.rule_id, d.draft, d.reason) for d in decisions] == [
        ("no-show-outreach", None, "condition 'when' is not true")
    ]
    assert rules.evaluate(appt, SOURCE, NOW) == []


def test_resource_type_without_rules_gives_nothing(rules):
    """A resource type no rule reads gives no decisions."""
    assert rules.decide(sample("Patient")[0], SOURCE, NOW) == []


def test_evaluation_failure_is_a_decision_not_an_exception(tmp_path):
    """A rule that fails at evaluation yields a reasoned non-draft and a warning, no raise."""
    text = VALID_RULE.replace("status = 'noshow'", "status.nosuchfunction()")
    write_rules(tmp_path / "maps", text)
    rules = RuleSet.load(tmp_path / "maps")
    with capture_logs() as logs:
        decisions = rules.decide(by_id("Appointment", NO_SHOW_ID), SOURCE, NOW)
    assert [d.draft for d in decisions] == [None]
    assert decisions[0].reason.startswith("evaluation failed: ")
    assert [(e["event"], e["rule"], e["resource_id"]) for e in logs] == [
        ("rule_evaluation_failed", "no-show", NO_SHOW_ID)
    ]


# -- broken mapping files --------------------------------------------------------------------


def assert_names(error: MappingError, path: Path, rule: str, key: str) -> None:
    """The error names file, rule and key, both as attributes and in its message."""
    assert (error.file, error.rule, error.key) == (str(path), rule, key)
    assert str(error).startswith(f"{path}: rule {rule!r}: key {key!r}: ")


@pytest.mark.parametrize(
    "when",
    ["status = #", "status = = 'noshow'", "status = 'noshow' and", "(status = 'noshow'"],
    ids=["lexer-error", "double-operator", "dangling-and", "unclosed-paren"],
)
def test_fhirpath_syntax_error_in_when(tmp_path, when):
    """A `when` that is not valid FHIRPath fails at load, naming file, rule and `when`."""
    path = write_rules(tmp_path / "maps", VALID_RULE.replace("status = 'noshow'", when))
    error = mapping_error(tmp_path / "maps")
    assert_names(error, path, "no-show", "when")
    assert "FHIRPath does not compile" in str(error)


def test_fhirpath_syntax_error_in_title(tmp_path):
    """A broken {{ }} expression in the title names the key task.title."""
    text = VALID_RULE.replace("display.first() }}", "display.first( }}")
    path = write_rules(tmp_path / "maps", text)
    assert_names(mapping_error(tmp_path / "maps"), path, "no-show", "task.title")


def test_unknown_resource_type(tmp_path):
    """A rule reading a type that is not a FHIR resource names the key `resource`."""
    path = write_rules(tmp_path / "maps", VALID_RULE.replace("Appointment", "Appointmentt"))
    error = mapping_error(tmp_path / "maps")
    assert_names(error, path, "no-show", "resource")
    assert "Appointmentt" in str(error)


def test_duplicate_rule_id_across_files(tmp_path):
    """The same rule id in two files is reported in the second file, naming the first."""
    first = write_rules(tmp_path / "maps", VALID_RULE, "a.yaml")
    second = write_rules(tmp_path / "maps", VALID_RULE, "b.yaml")
    error = mapping_error(tmp_path / "maps")
    assert_names(error, second, "no-show", "id")
    assert f"duplicate rule id (first defined in {first})" in str(error)


def test_missing_task_queue(tmp_path):
    """A rule without task.queue names the rule and the key task.queue."""
    path = write_rules(tmp_path / "maps", VALID_RULE.replace("      queue: scheduling\n", ""))
    error = mapping_error(tmp_path / "maps")
    assert_names(error, path, "no-show", "task.queue")
    assert "Field required" in str(error)


def test_invalid_rule_without_id_is_named_by_position(tmp_path):
    """A rule with no id is named by its position (#1) and the key `id`."""
    path = write_rules(
        tmp_path / "maps", VALID_RULE.replace("  - id: no-show\n    resource", "  - resource")
    )
    assert_names(mapping_error(tmp_path / "maps"), path, "#1", "id")


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    """A YAML syntax error names file:line:column."""
    path = write_rules(tmp_path / "maps", VALID_RULE + "  - id: [broken\n")
    error = mapping_error(tmp_path / "maps")
    assert error.file == f"{path}:12:1"
    assert str(error).startswith(f"{path}:12:1: YAML syntax error")


def test_empty_or_missing_folder(tmp_path):
    """A missing folder, or one without *.yaml files, is a MappingError naming it."""
    assert "not found" in str(mapping_error(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    assert "no mapping files" in str(mapping_error(tmp_path / "empty"))
