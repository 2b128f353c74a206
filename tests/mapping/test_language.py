"""The mapping rule language, one feature at a time (engine alone, or through the Ingestor)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_bridge.mapping import expr as expr_module
from fhir_bridge.mapping.engine import (
    CloseCase,
    CompiledRule,
    Evaluation,
    NoLookup,
    Problem,
    RuleSet,
    compile_folder,
)
from fhir_bridge.store.sqlite import SqliteStore
from fhir_bridge.sync.ingest import Ingestor
from fhir_bridge.tasks.model import Priority, TaskStatus, task_id
from fhir_bridge.tasks.service import TaskService
from tests.utils import NOW, ROOT, sample

SOURCE = "main-ehr"
QUEUES = {"queues": {"scheduling": {"title": "Scheduling"}}}
PATIENT_OF_APPOINTMENT = "participant.actor.reference.where(startsWith('Patient/')).first()"

# A small Appointment for engine-only tests (the engine does not validate resources).
APPOINTMENT: dict[str, Any] = {
    "resourceType": "Appointment",
    "id": "a1",
    "status": "booked",
    "start": "2026-11-27T09:00:00Z",
    "appointmentType": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "CHECKUP"}]
    },
    "participant": [
        {"actor": {"reference": "Patient/p1"}, "status": "needs-action"},
        {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
    ],
}

CONCEPT_MAP: dict[str, Any] = {
    "resourceType": "ConceptMap",
    "id": "visit-kind",
    "name": "VisitKind",
    "url": "urn:test:visit-kind",
    "group": [
        {
            "source": "http://terminology.hl7.org/CodeSystem/v2-0276",
            "element": [
                {"code": "CHECKUP", "target": [{"code": "check-up", "display": "check-up visit"}]},
                {"code": "WALKIN", "target": [{"code": "walk-in"}]},
                {"code": "ROUTINE", "target": [{"code": "x", "equivalence": "unmatched"}]},
            ],
        }
    ],
}

# NOW 2026-11-26 12:00 UTC; these Appointments of the sample are hand-checked.
RECENT_NO_SHOW_ID = "c9407ffe-4c8d-5535-a42c-82279af47227"  # noshow on 2026-11-23 12:00
PRE_VISIT_ID = "ac0e9784-8444-57a7-8212-f218a32303d4"  # booked for 2026-11-28, Patient 6eb50fea
WAITLIST_ID = "86a5e48f-89d9-53e4-becb-8c795584369a"  # supports CarePlan 107f26d4
ACTIVE_COVERAGE_ID = "83718964-0df3-4391-ba87-b93a6b8fe65e"  # Patient 6eb50fea
CANCELLED_COVERAGE_ID = "5a41266d-a1b4-404a-b92d-073505259c65"  # Patient 6eb50fea
ELIGIBILITY_ID = "d34d9d66-3973-5243-a3c0-a5100f82a86a"  # Patient 6eb50fea
CARE_PLAN_ID = "107f26d4-3425-41e8-b64d-788e5d44f4fc"


def by_id(resource_type: str, resource_id: str) -> dict[str, Any]:
    """A fresh copy of one sample resource."""
    return next(r for r in sample(resource_type) if r["id"] == resource_id)


def rule(**fields: Any) -> dict[str, Any]:
    """A rule on Appointment that always matches, with `fields` (and `task` keys) replaced."""
    task = {
        "queue": "scheduling",
        "kind": "k",
        "title": "t",
        "patient": PATIENT_OF_APPOINTMENT,
    } | fields.pop("task", {})
    return {"id": "r", "resource": "Appointment", "when": "true"} | fields | {"task": task}


def write_folder(folder: Path, *rules: dict[str, Any], maps: tuple[dict, ...] = ()) -> Path:
    """A mapping folder with queues.yaml, the rules and ConceptMaps; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queues.yaml").write_text(yaml.safe_dump(QUEUES), encoding="utf-8")
    text = yaml.safe_dump({"rules": list(rules)}, sort_keys=False)
    (folder / "rules.yaml").write_text(text, encoding="utf-8")
    if maps:
        (folder / "conceptmaps").mkdir()
        for cmap in maps:
            path = folder / "conceptmaps" / f"{cmap['id']}.json"
            path.write_text(json.dumps(cmap), encoding="utf-8")
    return folder


def compiled(folder: Path, *rules: dict[str, Any], maps: tuple[dict, ...] = ()) -> CompiledRule:
    """The first rule of a folder written with `rules`, compiled without problems."""
    ruleset, problems = compile_folder(write_folder(folder, *rules, maps=maps))
    assert [str(p) for p in problems] == []
    return ruleset.rules[0]


def load_problems(folder: Path, *rules: dict[str, Any]) -> list[Problem]:
    """The problems of a folder written with `rules`."""
    ruleset, found = compile_folder(write_folder(folder, *rules))
    assert ruleset is None
    return found


def run(
    rule_: CompiledRule, resource: dict[str, Any] | None = None, lookup: NoLookup | None = None
) -> Evaluation:
    """Evaluate `rule_` on `resource` (default APPOINTMENT) at NOW without a store."""
    resource = copy.deepcopy(resource or APPOINTMENT)
    return rule_.evaluate(resource, SOURCE, NOW, lookup or NoLookup())


def closing(rule_: CompiledRule, resource: dict[str, Any]) -> tuple[Evaluation, CloseCase | None]:
    """The evaluation of `resource` and the close case an active task of it would get."""
    ev = run(rule_, resource)
    assert ev.draft is None and ev.error is None
    return ev, rule_.close_case(ev)


@pytest.fixture(scope="module")
def default_rules() -> RuleSet:
    """The default mapping rules."""
    return RuleSet.load(ROOT / "mappings")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A mutable clock starting at NOW."""
    return Clock(NOW)


@pytest.fixture
def ingestor(store: SqliteStore, default_rules: RuleSet, clock: Clock) -> Ingestor:
    """An Ingestor over the default rules, the test store and the mutable clock."""
    return Ingestor(store, default_rules, TaskService(store, clock, []), clock)


# -- let ------------------------------------------------------------------------------------


def test_let_values_are_variables_and_may_use_earlier_lets(tmp_path):
    """A `let` is usable as %name, and a later `let` may use an earlier one."""
    r = compiled(
        tmp_path,
        rule(
            let={
                "patient_status": "participant.where(actor.reference.startsWith('Patient/'))"
                ".status.first()",
                "unanswered": "%patient_status = 'needs-action'",
            },
            when="%unanswered",
            task={"title": "Answer: {{ %patient_status }}"},
        ),
    )
    ev = run(r)
    assert ev.values["%patient_status"] == ["needs-action"]
    assert ev.values["%unanswered"] == [True]
    assert ev.matched and ev.draft.title == "Answer: needs-action"
    accepted = copy.deepcopy(APPOINTMENT)
    accepted["participant"][0]["status"] = "accepted"
    assert run(r, accepted).matched is False


def test_let_may_not_use_a_later_let(tmp_path):
    """A `let` that uses one defined after it is a load problem (unknown variable)."""
    found = load_problems(tmp_path, rule(let={"a": "%b", "b": "status"}))
    assert [(p.rule, p.key, p.message) for p in found] == [
        ("r", "let.a", "FHIRPath: unknown variable %b")
    ]


def test_let_name_may_not_be_reserved(tmp_path):
    """A `let` named like a built-in variable (%now) is refused."""
    (problem,) = load_problems(tmp_path, rule(let={"now": "start"}))
    assert problem.rule == "r"
    assert "name 'now' is reserved" in problem.message


# -- related --------------------------------------------------------------------------------


def coverage(cid: str, status: str, patient: str = "Patient/p1") -> dict[str, Any]:
    """A minimal Coverage of `patient`."""
    return {
        "resourceType": "Coverage",
        "id": cid,
        "status": status,
        "beneficiary": {"reference": patient},
    }


def test_related_gives_the_patients_resources_filtered_by_where(tmp_path):
    """`related` lists the patient's resources of that type that pass `where`, as %name."""
    r = compiled(
        tmp_path,
        rule(
            related={"coverages": {"resource": "Coverage", "where": "status = 'active'"}},
            when="%coverages.empty()",
            task={"description": "{{ %coverages.count() }} active"},
        ),
    )
    lookup = NoLookup(
        [
            coverage("c1", "active"),
            coverage("c2", "cancelled"),
            coverage("c3", "active", patient="Patient/other"),
        ]
    )
    ev = run(r, lookup=lookup)
    assert ev.values["%coverages"] == ["Coverage/c1"]
    assert ev.values["when"] == [False] and ev.draft is None
    nothing_active = NoLookup([coverage("c2", "cancelled")])
    ev = run(r, lookup=nothing_active)
    assert ev.values["%coverages"] == []
    assert ev.draft.description == "0 active"


def test_related_without_where_takes_every_resource_of_the_patient(tmp_path):
    """Without `where`, every resource of that type of the same patient is related."""
    r = compiled(
        tmp_path,
        rule(related={"coverages": {"resource": "Coverage"}}, when="%coverages.count() = 2"),
    )
    lookup = NoLookup([coverage("c1", "active"), coverage("c2", "cancelled")])
    assert run(r, lookup=lookup).values["%coverages"] == ["Coverage/c1", "Coverage/c2"]
    assert run(r, lookup=lookup).matched is True


def test_related_of_unknown_type_is_a_problem(tmp_path):
    """A `related` entry naming a type that is not a FHIR resource fails to load."""
    (problem,) = load_problems(tmp_path, rule(related={"x": {"resource": "Coverag"}}))
    assert (problem.key, problem.message) == (
        "related.x.resource",
        "unknown FHIR resource type 'Coverag'",
    )


# -- priority, due, text templates, labels, assignee -----------------------------------------


@pytest.mark.parametrize(
    ("start", "priority"),
    [("2026-11-27T09:00:00Z", Priority.URGENT), ("2026-12-27T09:00:00Z", Priority.ROUTINE)],
)
def test_computed_priority(tmp_path, start, priority):
    """A FHIRPath priority is computed per resource."""
    r = compiled(
        tmp_path,
        rule(task={"priority": "iif(start <= %now + 2 days, 'urgent', 'routine')"}),
    )
    ev = run(r, {**APPOINTMENT, "start": start})
    assert ev.draft.priority is priority
    assert ev.values["task.priority"] == [priority.value]


def test_fixed_priority(tmp_path):
    """A literal priority code is taken as is."""
    r = compiled(tmp_path, rule(task={"priority": "stat"}))
    assert r.priority is Priority.STAT
    assert run(r).draft.priority is Priority.STAT


def test_priority_that_is_not_a_priority_is_an_evaluation_error(tmp_path):
    """A priority expression giving 'high' yields Evaluation.error and no draft, no raise."""
    r = compiled(tmp_path, rule(task={"priority": "iif(status = 'booked', 'high', 'routine')"}))
    ev = run(r)
    assert (ev.matched, ev.draft) == (False, None)
    assert "ValueError: priority expression gave ['high']" in ev.error
    assert ev.reason.startswith("evaluation failed at task")


@pytest.mark.parametrize(
    ("due", "resource", "expected"),
    [
        ("%now + 2 days", {}, NOW + timedelta(days=2)),
        ("%now - 1 day", {}, NOW - timedelta(days=1)),
        ("start - 1 day", {}, datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
        ("start + 30 minutes", {}, datetime(2026, 11, 27, 9, 30, tzinfo=UTC)),
        (
            "end + 1 hour",
            {"end": "2026-11-27T09:20:00+01:00"},
            datetime(2026, 11, 27, 9, 20, tzinfo=UTC),
        ),
    ],
    ids=["now-plus-days", "now-minus-day", "start-minus-day", "start-plus-minutes", "offset-kept"],
)
def test_due_with_offsets(tmp_path, due, resource, expected):
    """`due` takes a date/dateTime expression with quantity offsets, keeping time zones."""
    r = compiled(tmp_path, rule(task={"due": due}))
    assert run(r, {**APPOINTMENT, **resource}).draft.due == expected


@pytest.fixture(params=[True, False], ids=["fast-path", "fhirpathpy"])
def both_paths(request, monkeypatch):
    """Run the test with the compiled FHIRPath subset, then with fhirpathpy alone."""
    monkeypatch.setattr(expr_module, "FAST_PATH", request.param)


# The engine hands %now to fhirpathpy as the text '...+00:00': fhirpathpy then fails on
# hour/minute arithmetic and compares %now as a string. See the report on engine.py.
@pytest.mark.parametrize(
    ("due", "expected"),
    [
        ("%now + 2 hours", NOW + timedelta(hours=2)),
        ("%now - 30 minutes", NOW - timedelta(minutes=30)),
    ],
    ids=["hours", "minutes"],
)
@pytest.mark.usefixtures("both_paths")
def test_now_takes_time_valued_quantities(tmp_path, due, expected):
    """`%now + 2 hours` (documented) works like `%now + 2 days`: no evaluation error."""
    r = compiled(tmp_path, rule(task={"due": due}))
    ev = run(r)
    assert ev.error is None
    assert ev.draft.due == expected


@pytest.mark.usefixtures("both_paths")
def test_now_compares_as_an_instant_not_as_text(tmp_path):
    """`start >= %now` compares instants: 10:00-05:00 (15:00 UTC) is after 12:00 UTC."""
    r = compiled(tmp_path, rule(when="start >= %now"))
    assert run(r, {**APPOINTMENT, "start": "2026-11-26T10:00:00-05:00"}).matched is True
    assert run(r, {**APPOINTMENT, "start": "2026-11-26T13:00:00+02:00"}).matched is False


def test_due_from_a_date_is_midnight_utc(tmp_path):
    """A date (no time) due is taken as 00:00 UTC of that day."""
    r = compiled(
        tmp_path,
        rule(
            resource="CoverageEligibilityRequest",
            task={"due": "servicedDate - 2 days", "patient": "patient.reference"},
        ),
    )
    cer = {
        "resourceType": "CoverageEligibilityRequest",
        "id": "e1",
        "servicedDate": "2026-12-16",
        "patient": {"reference": "Patient/p1"},
    }
    draft = run(r, cer).draft
    assert draft.due == datetime(2026, 12, 14, tzinfo=UTC)
    assert draft.patient == "Patient/p1"


def test_title_and_description_templates(tmp_path):
    """{{ }} parts are replaced by their values joined with ', '; an empty part is ''."""
    r = compiled(
        tmp_path,
        rule(
            task={
                "title": "Visit {{ id }} ({{ status }}) with {{ participant.actor.reference }}",
                "description": "Note: {{ comment }}",
            }
        ),
    )
    draft = run(r).draft
    assert draft.title == "Visit a1 (booked) with Patient/p1, Practitioner/d1"
    assert draft.description == "Note:"


def test_labels_are_sorted_deduplicated_and_empty_ones_dropped(tmp_path):
    """Labels render each template; the result is sorted, without duplicates or empties."""
    r = compiled(
        tmp_path,
        rule(
            task={
                "labels": [
                    "status:{{ status }}",
                    "{{ comment }}",
                    "area:general",
                    "status:{{ status }}",
                ]
            }
        ),
    )
    assert run(r).draft.labels == ("area:general", "status:booked")


def test_assignee_template(tmp_path):
    """The assignee template gives a coordinator id; an empty result means unassigned."""
    r = compiled(
        tmp_path,
        rule(
            task={"assignee": "{{ iif(status = 'booked', 'desk-' + %kind, '') }}"},
            let={"kind": "appointmentType.coding.code"},
        ),
    )
    assert run(r).draft.assignee == "desk-CHECKUP"
    assert run(r, {**APPOINTMENT, "status": "proposed"}).draft.assignee is None


# -- close_when -----------------------------------------------------------------------------

CLOSE_CASES = [
    {"condition": "status = 'fulfilled'", "status": "completed", "reason": "Seen."},
    {"condition": "status in ('fulfilled' | 'noshow')", "status": "cancelled", "reason": "Gone."},
    {"status": "cancelled", "reason": "Anything else."},
]


@pytest.mark.parametrize(
    ("status", "close_status", "reason"),
    [
        ("fulfilled", TaskStatus.COMPLETED, "Seen."),
        ("noshow", TaskStatus.CANCELLED, "Gone."),
        ("entered-in-error", TaskStatus.CANCELLED, "Anything else."),
    ],
    ids=["first-matches", "second-matches", "default-case"],
)
def test_close_when_first_matching_case_wins(tmp_path, status, close_status, reason):
    """When `when` fails, the first close case whose condition holds decides status and reason."""
    r = compiled(tmp_path, rule(when="status = 'booked'", close_when=CLOSE_CASES))
    _, case = closing(r, {**APPOINTMENT, "status": status})
    assert (case.status, case.reason) == (close_status, reason)


def test_close_when_without_a_matching_case_keeps_the_task(tmp_path):
    """With only conditional cases and none holding, nothing closes."""
    r = compiled(tmp_path, rule(when="status = 'booked'", close_when=CLOSE_CASES[:1]))
    ev, case = closing(r, {**APPOINTMENT, "status": "noshow"})
    assert case is None
    assert ev.values["close_when[0]"] == [False]


def test_close_when_default_and_never(tmp_path):
    """Without close_when a task closes as cancelled; `close_when: never` never closes it."""
    default = compiled(tmp_path / "a", rule(when="status = 'noshow'"))
    _, case = closing(default, APPOINTMENT)
    assert case.status is TaskStatus.CANCELLED
    assert case.reason == "the condition that opened this task no longer holds"
    never = compiled(tmp_path / "b", rule(when="status = 'noshow'", close_when="never"))
    assert never.close_cases == ()
    assert closing(never, APPOINTMENT)[1] is None


def test_close_when_single_mapping_is_one_case(tmp_path):
    """A close_when given as one mapping (not a list) is one unconditional case."""
    r = compiled(
        tmp_path,
        rule(when="status = 'noshow'", close_when={"status": "completed", "reason": "Done."}),
    )
    _, case = closing(r, APPOINTMENT)
    assert (case.status, case.reason) == (TaskStatus.COMPLETED, "Done.")


def test_close_when_cases_close_the_task_through_the_ingestor(tmp_path, store):
    """A stored task closes with the matching case's status, and its reason in the history."""
    folder = write_folder(tmp_path, rule(when="status = 'booked'", close_when=CLOSE_CASES))
    rules = RuleSet.load(folder)
    ingestor = Ingestor(store, rules, TaskService(store, lambda: NOW, []), lambda: NOW)
    appt = by_id("Appointment", PRE_VISIT_ID)
    ingestor.ingest(SOURCE, [appt])
    result = ingestor.ingest(SOURCE, [{**appt, "status": "fulfilled"}])
    assert result.tasks_closed == 1
    tid = task_id("r", SOURCE, "Appointment", PRE_VISIT_ID)
    assert store.get_task(tid).status is TaskStatus.COMPLETED
    assert store.task_history(tid)[-1].detail == {"note": "Seen."}


# -- trigger: new ---------------------------------------------------------------------------


def alive_patients() -> list[dict[str, Any]]:
    """Sample patients who are not deceased (intake-review applies to them)."""
    return [
        p for p in sample("Patient") if not p.get("deceasedBoolean") and "deceasedDateTime" not in p
    ]


def test_trigger_new_skips_the_initial_load(ingestor, store):
    """Patients loaded during the source's initial load get no intake-review task."""
    result = ingestor.ingest(SOURCE, alive_patients()[:5], "Patient", initial=True)
    assert "intake-review" not in result.tasks_by_rule
    assert store.list_tasks(rule_id="intake-review").total == 0


def test_trigger_new_opens_a_task_for_a_patient_seen_later(ingestor, store):
    """A patient first seen after the initial load gets an intake-review task."""
    first, later = alive_patients()[:5], alive_patients()[5]
    ingestor.ingest(SOURCE, first, "Patient", initial=True)
    result = ingestor.ingest(SOURCE, [later], "Patient")
    assert result.tasks_by_rule.get("intake-review") == 1
    task = store.get_task(task_id("intake-review", SOURCE, "Patient", later["id"]))
    assert (task.queue, task.patient, task.due) == (
        "records",
        f"Patient/{later['id']}",
        NOW + timedelta(days=3),
    )


def test_trigger_new_ignores_a_changed_known_patient(ingestor, store):
    """A patient from the initial load whose record changes later gets no intake-review task."""
    patients = alive_patients()[:5]
    ingestor.ingest(SOURCE, patients, "Patient", initial=True)
    changed = {**patients[0], "gender": "other" if patients[0]["gender"] != "other" else "male"}
    result = ingestor.ingest(SOURCE, [changed], "Patient")
    assert result.stored == 1
    assert store.list_tasks(rule_id="intake-review").total == 0


def test_trigger_new_task_of_a_new_patient_survives_a_change(ingestor, store):
    """A new patient's intake-review task is kept (close_when: never) when the record changes."""
    patient = alive_patients()[0]
    ingestor.ingest(SOURCE, [patient], "Patient")
    tid = task_id("intake-review", SOURCE, "Patient", patient["id"])
    result = ingestor.ingest(SOURCE, [{**patient, "deceasedBoolean": True}], "Patient")
    assert result.stored == 1
    assert store.get_task(tid).status is TaskStatus.OPEN
    assert [e.action for e in store.task_history(tid)] == ["created"]


# `trigger: new` is checked in Ingestor._one only; reevaluate() must honour it as well.
def test_reevaluate_does_not_fire_trigger_new_rules(ingestor, store):
    """A re-evaluation sweep opens no intake-review task for patients of the initial load."""
    ingestor.ingest(SOURCE, alive_patients()[:5], "Patient", initial=True)
    result = ingestor.reevaluate()
    assert result.tasks_by_rule.get("intake-review", 0) == 0
    assert store.list_tasks(rule_id="intake-review").total == 0


# -- reopen_on_change ------------------------------------------------------------------------


def statement(status: str) -> dict[str, Any]:
    """The first sample MedicationStatement with `status`."""
    return next(m for m in sample("MedicationStatement") if m["status"] == status)


def test_reopen_on_change_reopens_a_completed_reconciliation(ingestor, store):
    """A completed reconciliation task reopens, unassigned, when its statement changes."""
    med = statement("active")
    ingestor.ingest(SOURCE, [med], "MedicationStatement", initial=True)
    tid = task_id("medication-reconciliation", SOURCE, "MedicationStatement", med["id"])
    ingestor.tasks.claim(tid, "alice")
    ingestor.tasks.change_status(tid, TaskStatus.COMPLETED, "alice")
    same = ingestor.ingest(SOURCE, [copy.deepcopy(med)], "MedicationStatement")
    assert (same.unchanged, same.tasks_reopened) == (1, 0)
    changed = {**med, "dosage": [{"text": "twice a day"}]}
    result = ingestor.ingest(SOURCE, [changed], "MedicationStatement")
    assert result.tasks_reopened == 1
    task = store.get_task(tid)
    assert (task.status, task.assignee) == (TaskStatus.OPEN, None)
    last = store.task_history(tid)[-1]
    assert (last.actor, last.action, last.from_status, last.to_status) == (
        "bridge",
        "reopened",
        "completed",
        "open",
    )


def test_rule_without_reopen_on_change_stays_closed(ingestor, store):
    """A completed confirm-stopped-medication task stays completed when its statement changes."""
    med = statement("stopped")
    ingestor.ingest(SOURCE, [med], "MedicationStatement", initial=True)
    tid = task_id("confirm-stopped-medication", SOURCE, "MedicationStatement", med["id"])
    ingestor.tasks.change_status(tid, TaskStatus.COMPLETED, "alice")
    result = ingestor.ingest(SOURCE, [{**med, "note": [{"text": "called"}]}])
    assert (result.stored, result.tasks_reopened) == (1, 0)
    assert store.get_task(tid).status is TaskStatus.COMPLETED


def test_reevaluate_does_not_reopen(ingestor, store, clock):
    """A sweep (the resource did not change) leaves a completed reconciliation closed."""
    med = statement("active")
    ingestor.ingest(SOURCE, [med], "MedicationStatement", initial=True)
    tid = task_id("medication-reconciliation", SOURCE, "MedicationStatement", med["id"])
    ingestor.tasks.change_status(tid, TaskStatus.COMPLETED, "alice")
    clock.now = NOW + timedelta(days=1)
    assert ingestor.reevaluate().tasks_reopened == 0
    assert store.get_task(tid).status is TaskStatus.COMPLETED


# -- dependents -----------------------------------------------------------------------------


def pre_visit_task(store: SqliteStore) -> Any:
    """The pre-visit-coverage-check task of the hand-checked booked Appointment (or None)."""
    return store.get_task(task_id("pre-visit-coverage-check", SOURCE, "Appointment", PRE_VISIT_ID))


def test_coverage_arriving_closes_the_pre_visit_check(ingestor, store):
    """An active (not a cancelled) Coverage arriving closes the patient's pre-visit check."""
    ingestor.ingest(SOURCE, [by_id("CoverageEligibilityRequest", ELIGIBILITY_ID)], initial=True)
    ingestor.ingest(SOURCE, [by_id("Appointment", PRE_VISIT_ID)], initial=True)
    assert pre_visit_task(store).status is TaskStatus.OPEN
    cancelled = ingestor.ingest(SOURCE, [by_id("Coverage", CANCELLED_COVERAGE_ID)])
    assert cancelled.tasks_closed == 0
    assert pre_visit_task(store).status is TaskStatus.OPEN
    active = ingestor.ingest(SOURCE, [by_id("Coverage", ACTIVE_COVERAGE_ID)])
    assert active.tasks_closed == 1
    task = pre_visit_task(store)
    assert task.status is TaskStatus.CANCELLED
    assert store.task_history(task.id)[-1].action == "auto-closed"


def test_coverage_ending_opens_the_pre_visit_check(ingestor, store):
    """With coverage on file no check opens; the Coverage turning cancelled opens one."""
    cov = by_id("Coverage", ACTIVE_COVERAGE_ID)
    page = [by_id("CoverageEligibilityRequest", ELIGIBILITY_ID), cov]
    ingestor.ingest(SOURCE, page, initial=True)
    ingestor.ingest(SOURCE, [by_id("Appointment", PRE_VISIT_ID)], initial=True)
    assert pre_visit_task(store) is None
    result = ingestor.ingest(SOURCE, [{**cov, "status": "cancelled"}])
    assert result.tasks_by_rule == {"pre-visit-coverage-check": 1}
    task = pre_visit_task(store)
    assert task.status is TaskStatus.OPEN
    assert task.description == "Active coverages on file: 0; eligibility requests: 1."


def test_booked_follow_up_completes_the_care_plan_task(ingestor, store):
    """Booking the plan's supporting appointment completes its schedule-follow-up task."""
    waitlisted = by_id("Appointment", WAITLIST_ID)
    ingestor.ingest(SOURCE, [waitlisted], initial=True)
    ingestor.ingest(SOURCE, [by_id("CarePlan", CARE_PLAN_ID)], initial=True)
    tid = task_id("schedule-follow-up", SOURCE, "CarePlan", CARE_PLAN_ID)
    assert store.get_task(tid).status is TaskStatus.OPEN
    ingestor.ingest(SOURCE, [{**waitlisted, "status": "booked"}])
    assert store.get_task(tid).status is TaskStatus.COMPLETED
    note = store.task_history(tid)[-1].detail["note"]
    assert note.startswith("A follow-up appointment for this plan is booked")


# -- ConceptMaps ----------------------------------------------------------------------------


def test_translate_and_translate_display(tmp_path):
    """translate()/translateDisplay() by map id, name or url; unmapped codes give nothing."""
    r = compiled(
        tmp_path,
        rule(
            let={
                "code": "appointmentType.coding.translate('visit-kind')",
                "text": "appointmentType.coding.translateDisplay('urn:test:visit-kind')",
                "plain": "appointmentType.coding.code.translateDisplay('VisitKind')",
            },
            task={"title": "{{ %code }}|{{ %text }}|{{ %plain }}"},
        ),
        maps=(CONCEPT_MAP,),
    )
    assert run(r).draft.title == "check-up|check-up visit|check-up visit"
    for code, title in [("WALKIN", "walk-in|walk-in|walk-in"), ("ROUTINE", "||"), ("OTHER", "||")]:
        other = copy.deepcopy(APPOINTMENT)
        other["appointmentType"]["coding"][0]["code"] = code
        assert run(r, other).draft.title == title


# docs/mapping-reference.md: "Inputs may be codes or Codings (matched on `system` when the
# group has a `source`)".
def test_translate_respects_the_coding_system(tmp_path):
    """A Coding from another code system is not translated by a map for a different system."""
    r = compiled(
        tmp_path,
        rule(
            let={"code": "appointmentType.coding.translate('visit-kind')"},
            task={"title": "code: {{ %code }}"},
        ),
        maps=(CONCEPT_MAP,),
    )
    assert run(r).draft.title == "code: check-up"
    other = copy.deepcopy(APPOINTMENT)
    other["appointmentType"]["coding"][0]["system"] = "http://example.org/other-codes"
    assert run(r, other).draft.title == "code:"


def test_translate_with_an_unknown_map_is_a_load_problem(tmp_path):
    """Naming a ConceptMap that does not exist fails the load, naming the map and the key."""
    [problem] = load_problems(
        tmp_path,
        rule(
            let={"code": "appointmentType.coding.translate('nope')"},
            task={"title": "{{ %code }}"},
        ),
    )
    assert problem.key == "let.code"
    assert "no ConceptMap named 'nope'" in problem.message


def test_unknown_function_is_a_load_problem(tmp_path):
    """A function FHIRPath does not have fails the load instead of every evaluation."""
    [problem] = load_problems(tmp_path, rule(when="status.nosuchfunction()"))
    assert problem.key == "when"
    assert "unknown function nosuchfunction()" in problem.message


def test_default_titles_use_the_plain_language_map(default_rules):
    """The default scheduling titles turn v2-0276 codes into plain words."""
    appt = by_id("Appointment", RECENT_NO_SHOW_ID)
    draft = default_rules.get("no-show-outreach").evaluate(appt, SOURCE, NOW, NoLookup()).draft
    assert draft.title == "Reach out after a missed routine visit"


def test_broken_concept_map_is_a_load_problem(tmp_path):
    """A conceptmaps/*.json that is not a ConceptMap fails the load, naming the file."""
    folder = write_folder(tmp_path, rule())
    (folder / "conceptmaps").mkdir()
    (folder / "conceptmaps" / "bad.json").write_text('{"resourceType": "ValueSet"}')
    ruleset, found = compile_folder(folder)
    assert ruleset is None
    assert [(p.file, p.line, p.column) for p in found] == [
        (str(folder / "conceptmaps" / "bad.json"), 1, 1)
    ]
    assert "not a ConceptMap" in found[0].message


# -- on_status ------------------------------------------------------------------------------

ON_STATUS_RULE = """\
rules:
  - id: r
    resource: Appointment
    when: "true"
    task:
      queue: scheduling
      kind: k
      title: "t"
      patient: "'Patient/1'"
    on_status:
      completed:
        - update_focus:
            set:
              status: "'booked' +"
        - create:
            resourceType: Communicationn
            status: completed
            about: [{reference: "Appointment/{{ id }}"}]
      cancelled:
        - task_output: {type: why, value: "status"}
"""


def write_text_folder(folder: Path, text: str) -> Path:
    """A mapping folder with queues.yaml and one rules file of `text`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queues.yaml").write_text(yaml.safe_dump(QUEUES), encoding="utf-8")
    (folder / "rules.yaml").write_text(text, encoding="utf-8")
    return folder


def test_on_status_problems_are_reported_at_their_lines(tmp_path):
    """Bad FHIRPath in update_focus and an unknown resourceType in create fail the load."""
    folder = write_text_folder(tmp_path, ON_STATUS_RULE)
    ruleset, found = compile_folder(folder)
    assert ruleset is None
    assert [(p.line, p.column, p.rule, p.key) for p in found] == [
        (14, 23, "r", "on_status.completed.0.update_focus.set.status"),
        (16, 27, "r", "on_status.completed.1.create.resourceType"),
    ]
    assert found[0].message.startswith("FHIRPath: column 11")
    assert found[1].message == "unknown FHIR resource type 'Communicationn'"


def test_on_status_template_in_create_is_checked(tmp_path):
    """A broken {{ }} inside a `create` body fails the load too."""
    text = ON_STATUS_RULE.replace(" +", "").replace("Communicationn", "Communication")
    folder = write_text_folder(tmp_path, text.replace("{{ id }}", "{{ id. }}"))
    ruleset, found = compile_folder(folder)
    assert ruleset is None
    assert [(p.line, p.key) for p in found] == [
        (18, "on_status.completed.1.create.about.0.reference")
    ]


def test_valid_on_status_actions_are_kept_as_data(tmp_path):
    """Valid actions are kept, per status, as plain data on CompiledRule.on_status."""
    text = ON_STATUS_RULE.replace(" +", "").replace("Communicationn", "Communication")
    ruleset, found = compile_folder(write_text_folder(tmp_path, text))
    assert found == []
    assert ruleset.rules[0].on_status == {
        TaskStatus.COMPLETED: (
            {"update_focus": {"set": {"status": "'booked'"}}},
            {
                "create": {
                    "resourceType": "Communication",
                    "status": "completed",
                    "about": [{"reference": "Appointment/{{ id }}"}],
                }
            },
        ),
        TaskStatus.CANCELLED: ({"task_output": {"type": "why", "value": "status"}},),
    }


def test_action_with_two_kinds_is_refused(tmp_path):
    """An action giving both task_output and update_focus is a load problem."""
    text = ON_STATUS_RULE.replace(" +", "").replace("Communicationn", "Communication")
    text = text.replace(
        '{type: why, value: "status"}',
        '{type: why, value: "status"}\n          update_focus: {set: {status: "1"}}',
    )
    ruleset, found = compile_folder(write_text_folder(tmp_path, text))
    assert ruleset is None
    assert len(found) == 1 and found[0].rule == "r"
    assert "exactly one of" in found[0].message


# -- re-evaluation as time passes ------------------------------------------------------------


def test_reevaluate_closes_a_no_show_once_it_is_31_days_old(ingestor, store, clock):
    """The sweep keeps a recent no-show's task while it is recent, and cancels it 31 days on."""
    appt = by_id("Appointment", RECENT_NO_SHOW_ID)
    ingestor.ingest(SOURCE, [appt], "Appointment", initial=True)
    tid = task_id("no-show-outreach", SOURCE, "Appointment", RECENT_NO_SHOW_ID)
    clock.now = NOW + timedelta(days=1)
    assert ingestor.reevaluate().tasks_closed == 0
    assert store.get_task(tid).status is TaskStatus.OPEN
    clock.now = NOW + timedelta(days=31)
    result = ingestor.reevaluate()
    assert result.tasks_closed == 1
    task = store.get_task(tid)
    assert task.status is TaskStatus.CANCELLED
    last = store.task_history(tid)[-1]
    assert (last.action, last.at) == ("auto-closed", NOW + timedelta(days=31))
    assert last.detail["note"].startswith("The missed appointment is no longer recent")
