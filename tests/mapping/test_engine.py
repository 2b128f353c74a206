"""Tests for fhir_bridge.mapping.engine: loading mapping folders and evaluating rules."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fhir_bridge.config import DEFAULT_RESOURCE_TYPES
from fhir_bridge.errors import MappingError
from fhir_bridge.mapping.engine import NoLookup, Problem, RuleSet, compile_folder
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.engine import dependency_order
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.model import Priority, TaskStatus, task_id
from fhir_bridge.tasks.service import TaskService
from tests.expected import expected_active_tasks
from tests.utils import NOW, ROOT, sample

MAPPINGS = ROOT / "mappings"
SOURCE = "main-ehr"

NO_SHOW_ID = "c9407ffe-4c8d-5535-a42c-82279af47227"  # noshow on 2026-11-23, ROUTINE visit
OLD_NO_SHOW_ID = "e84176dd-6baa-5f29-bde1-8fb3d4b0c000"  # noshow on 2026-07-08
CONFIRM_ID = "a628b744-9e13-5065-97e9-c590348f1ca1"  # booked, patient needs-action
CANCELLED_ID = "000df40e-4978-5148-8a22-978dcc7c4136"  # cancelled, was due 2027-02-11
PRE_VISIT_ID = "ac0e9784-8444-57a7-8212-f218a32303d4"  # booked for 2026-11-28
PRIOR_AUTH_ID = "cb9b66bd-2fad-516b-b154-c23f180018ea"
CARE_PLAN_ID = "107f26d4-3425-41e8-b64d-788e5d44f4fc"
STATEMENT_ID = "2fe441b6-4a6c-55c8-a0bd-4c7ecf8de617"

QUEUES = """\
queues:
  scheduling:
    title: Scheduling
"""

# Line numbers matter: the load-error tests assert exact line:column positions in this text.
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

DEFAULT_RULES = {
    "confirm-appointment",
    "no-show-outreach",
    "reschedule-cancelled",
    "waitlist-follow-up",
    "pre-visit-coverage-check",
    "schedule-follow-up",
    "care-plan-review",
    "medication-reconciliation",
    "confirm-stopped-medication",
    "verify-eligibility",
    "prior-authorization",
    "intake-review",
    "update-contact-details",
    "family-appointment-booked",
    "family-appointment-cancelled",
    "family-appointment-missed",
    "family-medication-started",
    "family-medication-stopped",
    "family-authorization-decided",
}
QUEUE_NAMES = {"scheduling", "follow-up", "medications", "insurance", "records", "family"}


def by_id(resource_type: str, resource_id: str) -> dict[str, Any]:
    """One sample resource by id."""
    return next(r for r in sample(resource_type) if r["id"] == resource_id)


def write_folder(
    folder: Path, files: dict[str, str], queues: str | None = QUEUES
) -> dict[str, Path]:
    """Write a mapping folder (queues.yaml unless `queues` is None); return each file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    if queues is not None:
        (folder / "queues.yaml").write_text(queues, encoding="utf-8")
    paths = {}
    for name, text in files.items():
        paths[name] = folder / name
        paths[name].write_text(text, encoding="utf-8")
    return paths


def problems_of(folder: Path) -> list[Problem]:
    """The problems compiling `folder` reports (asserting it gives no rule set)."""
    ruleset, problems = compile_folder(folder)
    assert ruleset is None
    return problems


def only_problem(folder: Path) -> Problem:
    """The single problem compiling `folder` reports."""
    (problem,) = problems_of(folder)
    return problem


def mapping_error(folder: Path) -> MappingError:
    """The MappingError that loading `folder` raises."""
    with pytest.raises(MappingError) as info:
        RuleSet.load(folder)
    return info.value


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    """The default mapping rules."""
    return RuleSet.load(MAPPINGS)


@pytest.fixture(scope="module")
def loaded_store(rules):
    """A store after one initial load of every sample type, in dependency order, at NOW."""
    store = SqliteStore(":memory:")
    ingestor = Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)
    results = {}
    for rtype in dependency_order(DEFAULT_RESOURCE_TYPES, rules):
        results[rtype] = ingestor.ingest(SOURCE, sample(rtype), rtype, initial=True)
    yield store, results
    store.close()


# -- the default mappings ------------------------------------------------------------------


def test_default_mappings_load(rules):
    """The default folder gives the 19 rules, the types they read and the six queues."""
    assert {r.id for r in rules.rules} == DEFAULT_RULES
    assert rules.resource_types == {
        "Patient",
        "CarePlan",
        "Appointment",
        "MedicationStatement",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",  # family-authorization-decided
    }
    assert rules.queues == QUEUE_NAMES
    assert set(rules.queue_info) == QUEUE_NAMES
    assert [r.id for r in rules.for_type("Observation")] == []


def test_dependents_and_dependency_order(rules):
    """Rules reading other types through `related` are indexed, and those types sync first."""
    assert [r.id for r in rules.dependents("Coverage")] == ["pre-visit-coverage-check"]
    assert [r.id for r in rules.dependents("CoverageEligibilityRequest")] == [
        "pre-visit-coverage-check"
    ]
    assert [r.id for r in rules.dependents("Appointment")] == ["schedule-follow-up"]
    family = [r.id for r in rules.rules if r.id.startswith("family-")]
    for rtype in ("Patient", "RelatedPerson", "Consent"):
        assert [r.id for r in rules.dependents(rtype)] == family
    order = dependency_order(DEFAULT_RESOURCE_TYPES, rules)
    assert sorted(order) == sorted(DEFAULT_RESOURCE_TYPES)
    assert order.index("Coverage") < order.index("Appointment")
    assert order.index("CoverageEligibilityRequest") < order.index("Appointment")
    assert order.index("Appointment") < order.index("CarePlan")
    for rtype in ("RelatedPerson", "Consent"):  # who may be told, before what to tell
        assert order.index(rtype) < order.index("Appointment")
        assert order.index(rtype) < order.index("MedicationStatement")


def test_active_tasks_per_rule_match_an_independent_count(rules, loaded_store):
    """After a full initial load at NOW, active tasks per rule equal tests/expected.py."""
    store, results = loaded_store
    expected = expected_active_tasks(NOW)
    assert set(expected) == {r.id for r in rules.rules}  # a new rule needs an expectation
    assert sum(n > 0 for n in expected.values()) >= 10
    active = Counter(t.rule_id for t in store.iter_tasks() if t.is_active)
    assert active == Counter({rule: n for rule, n in expected.items() if n})
    assert sum(r.rule_errors for r in results.values()) == 0
    assert sum(r.quarantined for r in results.values()) == 0


def test_first_load_closes_nothing(loaded_store):
    """Loading in dependency order opens no task that a later page closes again."""
    store, results = loaded_store
    assert sum(r.tasks_closed for r in results.values()) == 0
    assert all(t.status is TaskStatus.OPEN for t in store.iter_tasks())


def test_no_show_draft_is_filled_in(rules):
    """A recent no-show gives a draft with patient, ConceptMap title, urgency, label and now+2d."""
    ev = rules.get("no-show-outreach").evaluate(
        by_id("Appointment", NO_SHOW_ID), SOURCE, NOW, NoLookup()
    )
    draft = ev.draft
    assert (ev.matched, ev.error, ev.reason) == (True, None, "'when' is true")
    assert draft.rule_id == "no-show-outreach"
    assert draft.source == SOURCE
    assert (draft.focus_type, draft.focus_id) == ("Appointment", NO_SHOW_ID)
    assert draft.patient == "Patient/ec4a63c4-c806-4da2-ae65-f0b360489971"
    assert (draft.queue, draft.kind) == ("scheduling", "no-show-outreach")
    assert draft.title == "Reach out after a missed routine visit"
    assert draft.priority is Priority.URGENT
    assert draft.due == NOW + timedelta(days=2)
    assert draft.labels == ("appointment:noshow",)
    assert (draft.description, draft.assignee) == (None, None)
    assert draft.id == task_id("no-show-outreach", SOURCE, "Appointment", NO_SHOW_ID)
    assert ev.values["%visit"] == ["routine visit"]


def test_confirm_appointment_draft(rules):
    """A booked visit not yet accepted: description, routine, due the day before, a label."""
    draft = (
        rules.get("confirm-appointment")
        .evaluate(by_id("Appointment", CONFIRM_ID), SOURCE, NOW, NoLookup())
        .draft
    )
    assert draft.title == "Confirm follow-up visit with the patient"
    assert draft.description == "Status in the EHR: booked; the patient's answer: needs-action."
    assert draft.priority is Priority.ROUTINE
    assert draft.due == datetime(2026, 12, 27, 14, 0, tzinfo=UTC)
    assert draft.labels == ("appointment:booked",)
    assert draft.patient == "Patient/6e13daad-315d-4c6c-aebc-980f048db03e"


def test_reschedule_cancelled_draft(rules):
    """A cancelled future visit is urgent to rebook; the reason is in the description."""
    draft = (
        rules.get("reschedule-cancelled")
        .evaluate(by_id("Appointment", CANCELLED_ID), SOURCE, NOW, NoLookup())
        .draft
    )
    assert draft.title == "Rebook the cancelled check-up"
    assert draft.description == "Cancellation reason: Other: Error"
    assert draft.priority is Priority.URGENT
    assert draft.due == NOW + timedelta(days=3)


def test_pre_visit_draft_without_coverage_on_file(rules):
    """A visit in 2 days with nothing on file: urgent, due a day before, counts in the text."""
    draft = (
        rules.get("pre-visit-coverage-check")
        .evaluate(by_id("Appointment", PRE_VISIT_ID), SOURCE, NOW, NoLookup())
        .draft
    )
    assert (draft.queue, draft.priority) == ("insurance", Priority.URGENT)
    assert draft.title == "Check coverage before a visit on 2026-11-28"
    assert draft.description == "Active coverages on file: 0; eligibility requests: 0."
    assert draft.due == datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


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


def test_care_plan_and_statement_drafts(rules):
    """Care plan and medication drafts land in their queues with the interpolated titles."""
    (plan,) = rules.evaluate(by_id("CarePlan", CARE_PLAN_ID), SOURCE, NOW)
    assert (plan.rule_id, plan.queue) == ("schedule-follow-up", "follow-up")
    assert plan.title == "Schedule follow-up: Physical therapy procedure (regime/therapy)"
    assert plan.description == "Care plan: Therapy (regime/therapy)"
    assert plan.due == NOW + timedelta(days=7)
    (med,) = rules.evaluate(by_id("MedicationStatement", STATEMENT_ID), SOURCE, NOW)
    assert (med.rule_id, med.queue) == ("medication-reconciliation", "medications")
    assert med.title == "Reconcile medication: Penicillin V Potassium 250 MG Oral Tablet"


def test_focus_version_comes_from_meta(rules):
    """The draft carries the resource's meta.versionId."""
    appt = by_id("Appointment", NO_SHOW_ID)
    appt["meta"] = {**appt.get("meta", {}), "versionId": "7"}
    (draft,) = rules.evaluate(appt, SOURCE, NOW)
    assert draft.focus_version == "7"


def test_non_matching_resource_gives_reason_and_close_case(rules):
    """A no-show older than 30 days gives no draft, the reason, and the rule's close case."""
    rule = rules.get("no-show-outreach")
    ev = rule.evaluate(by_id("Appointment", OLD_NO_SHOW_ID), SOURCE, NOW, NoLookup())
    assert (ev.matched, ev.draft, ev.error) == (False, None, None)
    assert ev.reason == "'when' is not true"
    assert ev.values["when"] == [False]
    case = rule.close_case(ev)
    assert case.status is TaskStatus.CANCELLED
    assert case.reason.startswith("The missed appointment is no longer recent")
    fulfilled = {**by_id("Appointment", NO_SHOW_ID), "status": "fulfilled"}
    ev = rule.evaluate(fulfilled, SOURCE, NOW, NoLookup())
    assert (ev.matched, ev.draft) == (False, None)
    assert ev.reason.startswith("'when' is not true")
    assert rule.close_case(ev) == case
    assert rules.evaluate(by_id("Appointment", OLD_NO_SHOW_ID), SOURCE, NOW) == []


def test_resource_type_without_rules_gives_nothing(rules):
    """A resource type no rule reads gives no rules and no drafts."""
    coverage = sample("Coverage")[0]
    assert rules.for_type("Coverage") == []
    assert rules.evaluate(coverage, SOURCE, NOW) == []


def test_evaluation_failure_is_an_evaluation_not_an_exception(tmp_path, store):
    """A rule failing at run time gives Evaluation.error; the Ingestor logs it and goes on."""
    text = VALID_RULE.replace("status = 'noshow'", "start > 5")  # dateTime vs integer
    write_folder(tmp_path / "maps", {"rules.yaml": text})
    rules = RuleSet.load(tmp_path / "maps")
    appt = by_id("Appointment", NO_SHOW_ID)
    ev = rules.rules[0].evaluate(appt, SOURCE, NOW, NoLookup())
    assert (ev.matched, ev.draft, ev.close) == (False, None, None)
    assert ev.reason == "evaluation failed at when"
    assert ev.error.startswith("when: ")
    assert rules.evaluate(appt, SOURCE, NOW) == []
    ingestor = Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)
    with capture_logs() as logs:
        result = ingestor.ingest(SOURCE, [appt], "Appointment")
    assert (result.stored, result.rule_errors, result.tasks_created) == (1, 1, 0)
    assert [(e["event"], e["rule"], e["resource_id"]) for e in logs] == [
        ("rule_evaluation_failed", "no-show", NO_SHOW_ID)
    ]


def test_valid_folder_compiles_without_problems(tmp_path):
    """The fixture rule compiles: one rule, its declared queue, no problems."""
    write_folder(tmp_path / "maps", {"rules.yaml": VALID_RULE})
    ruleset, problems = compile_folder(tmp_path / "maps")
    assert problems == []
    assert [r.id for r in ruleset.rules] == ["no-show"]
    assert ruleset.queues == {"scheduling"}
    assert ruleset.rules[0].file == str(tmp_path / "maps" / "rules.yaml")


# -- broken mapping files --------------------------------------------------------------------


def assert_problem(
    problem: Problem, path: Path, line: int, column: int, rule: str | None, key: str | None
) -> None:
    """The problem names file, exact line and column, rule and key."""
    assert (problem.file, problem.line, problem.column) == (str(path), line, column)
    assert (problem.rule, problem.key) == (rule, key)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("status = #", "FHIRPath: column 10: token recognition error at: '#'"),
        ("status = = 'noshow'", "FHIRPath: column 10: extraneous input '='"),
        ("status = 'noshow' and", "FHIRPath: column 22: mismatched input '<EOF>'"),
        ("(status = 'noshow'", "FHIRPath: column 19: missing ')' at '<EOF>'"),
    ],
    ids=["lexer-error", "double-operator", "dangling-and", "unclosed-paren"],
)
def test_fhirpath_syntax_error_in_when(tmp_path, when, message):
    """A `when` that is not valid FHIRPath fails at load at 4:11, naming the rule and `when`."""
    path = write_folder(
        tmp_path / "maps", {"r.yaml": VALID_RULE.replace("status = 'noshow'", when)}
    )
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path["r.yaml"], 4, 11, "no-show", "when")
    assert problem.message.startswith(message)


def test_load_raises_mapping_error_naming_file_line_column_rule_and_key(tmp_path):
    """RuleSet.load raises MappingError whose file is file:line:column, with rule and key."""
    path = write_folder(
        tmp_path / "maps", {"r.yaml": VALID_RULE.replace("status = 'noshow'", "status = = 1")}
    )["r.yaml"]
    error = mapping_error(tmp_path / "maps")
    assert (error.file, error.rule, error.key) == (f"{path}:4:11", "no-show", "when")
    assert str(error).startswith(f"{path}:4:11: rule 'no-show': key 'when': FHIRPath: column 10")


def test_problem_str_is_file_line_column_rule_key_message(tmp_path):
    """str(Problem) reads `file:line:col: rule: key: message` ('-' when there is no rule)."""
    path = write_folder(
        tmp_path / "maps", {"r.yaml": VALID_RULE.replace("status = 'noshow'", "statuss = 'x'")}
    )["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert str(problem) == (
        f"{path}:4:11: no-show: when: FHIRPath: unknown element 'statuss' on Appointment"
    )
    bare = Problem("q.yaml", 2, 1, None, None, "YAML syntax: oops")
    assert str(bare) == "q.yaml:2:1: -: YAML syntax: oops"


def test_every_problem_is_reported_and_listed(tmp_path):
    """Several broken rules give one problem each, and the MappingError lists them all."""
    second = VALID_RULE.replace("rules:\n", "").replace("id: no-show", "id: other")
    text = VALID_RULE.replace("queue: scheduling", "queue: nope") + second.replace(
        "status = 'noshow'", "%missing"
    )
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problems = problems_of(tmp_path / "maps")
    assert [(p.line, p.column, p.rule, p.key) for p in problems] == [
        (6, 14, "no-show", "task.queue"),
        (13, 11, "other", "when"),
    ]
    message = str(mapping_error(tmp_path / "maps"))
    assert message.startswith(f"{path}:6:14: rule 'no-show': key 'task.queue': unknown queue")
    assert f"\n  {path}:13:11: other: when: FHIRPath: unknown variable %missing" in message


def test_fhirpath_syntax_error_in_title(tmp_path):
    """A broken {{ }} expression in the title names task.title at its line and the part."""
    text = VALID_RULE.replace("display.first() }}", "display.first( }}")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 8, 14, "no-show", "task.title")
    assert "in {{ serviceType.coding.display.first( }}" in problem.message


def test_unknown_element_name(tmp_path):
    """`statuss = 'noshow'` (silently always empty) is a load error naming the element."""
    text = VALID_RULE.replace("status = 'noshow'", "statuss = 'noshow'")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 4, 11, "no-show", "when")
    assert problem.message == "FHIRPath: unknown element 'statuss' on Appointment"


def test_unknown_element_in_a_block_scalar_points_at_its_line(tmp_path):
    """A `when: >-` block with an unknown element is reported at the block's first line."""
    text = VALID_RULE.replace(
        "when: \"status = 'noshow'\"",
        "when: >-\n      status = 'noshow'\n      and participant.statuss = 'x'",
    )
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 4, 11, "no-show", "when")
    assert problem.message == ("FHIRPath: unknown element 'statuss' on Appointment.participant")


def test_unknown_variable(tmp_path):
    """A %name that no `let`/`related` defines is a load error, not an empty value."""
    text = VALID_RULE.replace("%now + 2 days", "%noww + 2 days")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 9, 12, "no-show", "task.due")
    assert problem.message == "FHIRPath: unknown variable %noww"


def test_unknown_resource_type(tmp_path):
    """A rule reading a type that is not a FHIR resource names the key `resource`."""
    text = VALID_RULE.replace("Appointment", "Appointmentt")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 3, 15, "no-show", "resource")
    assert problem.message == "unknown FHIR resource type 'Appointmentt'"


def test_duplicate_rule_id_across_files(tmp_path):
    """The same rule id in two files is reported at the second file's id, naming the first."""
    paths = write_folder(tmp_path / "maps", {"a.yaml": VALID_RULE, "b.yaml": VALID_RULE})
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, paths["b.yaml"], 2, 9, "no-show", "id")
    assert problem.message == f"duplicate rule id (also in {paths['a.yaml']})"


def test_missing_task_queue(tmp_path):
    """A rule without task.queue names task.queue at the task mapping (where it belongs)."""
    text = VALID_RULE.replace("      queue: scheduling\n", "")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 6, 7, "no-show", "task.queue")
    assert problem.message == "required key is missing"


def test_unknown_queue(tmp_path):
    """A queue not declared in queues.yaml is an error at the queue value, listing the known."""
    text = VALID_RULE.replace("queue: scheduling", "queue: schedulin")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 6, 14, "no-show", "task.queue")
    assert problem.message == "unknown queue 'schedulin' (declared in queues.yaml: scheduling)"


def test_unknown_key(tmp_path):
    """A misspelt key is reported at the key itself."""
    text = VALID_RULE.replace("    when:", "    whenn: x\n    when:")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 4, 5, "no-show", "whenn")
    assert problem.message == "unknown key"


def test_invalid_rule_without_id_is_named_by_position(tmp_path):
    """A rule with no id is named by its position (#2) and the key `id`, at its first line."""
    second = VALID_RULE.replace("rules:\n", "").replace(
        "  - id: no-show\n    resource", "  - resource"
    )
    path = write_folder(tmp_path / "maps", {"r.yaml": VALID_RULE + second})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 11, 5, "#2", "id")
    assert problem.message == "required key is missing"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    """A YAML syntax error names file:line:column of the offending character."""
    text = VALID_RULE.replace("kind: no-show", "kind: no-show: x")
    path = write_folder(tmp_path / "maps", {"r.yaml": text})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 7, 20, None, None)
    assert problem.message == "YAML syntax: mapping values are not allowed here"
    error = mapping_error(tmp_path / "maps")
    assert error.file == f"{path}:7:20"
    assert str(error) == f"{path}:7:20: YAML syntax: mapping values are not allowed here"


def test_yaml_syntax_error_at_end_of_file(tmp_path):
    """An unclosed flow list is reported where the file ends (line 12, after line 11)."""
    path = write_folder(tmp_path / "maps", {"r.yaml": VALID_RULE + "  - id: [broken\n"})["r.yaml"]
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, path, 12, 1, None, None)
    assert problem.message.startswith("YAML syntax: expected ',' or ']'")


def test_missing_queues_yaml(tmp_path):
    """A folder without queues.yaml fails, naming queues.yaml itself."""
    write_folder(tmp_path / "maps", {"r.yaml": VALID_RULE}, queues=None)
    problem = only_problem(tmp_path / "maps")
    assert_problem(problem, tmp_path / "maps" / "queues.yaml", 1, 1, None, None)
    assert problem.message.startswith("missing")
    assert str(tmp_path / "maps" / "queues.yaml") in str(mapping_error(tmp_path / "maps"))


def test_broken_queues_yaml(tmp_path):
    """A queue without a title is reported in queues.yaml at that queue's entry."""
    bad = "queues:\n  scheduling:\n    description: no title\n"
    write_folder(tmp_path / "maps", {"r.yaml": VALID_RULE}, queues=bad)
    problem = only_problem(tmp_path / "maps")
    assert_problem(
        problem, tmp_path / "maps" / "queues.yaml", 3, 5, None, "queues.scheduling.title"
    )
    assert problem.message == "required key is missing"


def test_empty_or_missing_folder(tmp_path):
    """A missing folder, or one without rule files, is a MappingError naming it."""
    assert "mappings folder not found" in str(mapping_error(tmp_path / "absent"))
    write_folder(tmp_path / "empty", {})
    error = mapping_error(tmp_path / "empty")
    assert error.file == f"{tmp_path / 'empty'}:1:1"
    assert "no mapping files" in str(error)
