"""Golden tests for mapping rules, kept next to them in `mappings/tests/*.yaml`.

    now: "2026-11-26T12:00:00Z"          # %now for every case (a case may override it)
    cases:
      - name: a recent no-show opens outreach
        resource: {resourceType: Appointment, id: a1, status: noshow, ...}
        # or  resource_file: fixtures/appointment.json   (relative to this file)
        store: [ ... ]                    # the patient's other resources, for `related`
        new: false                        # first sight after the initial load (trigger: new)
        expect:                           # every task the resource must open, and no other
          no-show-outreach: {priority: urgent, due: "2026-11-28T12:00:00+00:00"}
        close:                            # tasks that must close, with the status
          confirm-appointment: completed

`expect: {}` means no task at all. Only the fields given are compared, so a test states
what matters to it; a rule of the resource's type that opens a task not listed fails the case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fhir_bridge.mapping.engine import NoLookup, RuleSet
from fhir_bridge.tasks.model import TaskDraft

_FIELDS = (
    "queue",
    "kind",
    "title",
    "description",
    "priority",
    "due",
    "patient",
    "labels",
    "assignee",
)


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    now: datetime | None = None
    resource: dict[str, Any] | None = None
    resource_file: str | None = None
    store: list[dict[str, Any]] = Field(default_factory=list)
    new: bool = False
    expect: dict[str, dict[str, Any]] = Field(default_factory=dict)
    close: dict[str, str] = Field(default_factory=dict)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    now: datetime | None = None
    cases: list[_Case] = Field(min_length=1)


@dataclass
class CaseResult:
    """The outcome of one golden case."""

    file: str
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the case passed."""
        return not self.failures


def _value(draft: TaskDraft, name: str) -> Any:
    value = getattr(draft, name)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return getattr(value, "value", value)


def _expected(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def run_case(
    case: _Case, rules: RuleSet, base: Path, file: str, default_now: datetime
) -> CaseResult:
    """Evaluate one case against the rules and compare."""
    result = CaseResult(file, case.name)
    resource = case.resource
    if case.resource_file:
        resource = json.loads((base / case.resource_file).read_text(encoding="utf-8"))
    if not isinstance(resource, dict) or "resourceType" not in resource:
        result.failures.append("the case has no resource (give `resource` or `resource_file`)")
        return result
    now = (case.now or default_now).astimezone(UTC)
    lookup = NoLookup(case.store)
    got: dict[str, TaskDraft] = {}
    closed: dict[str, str] = {}
    for rule in rules.for_type(resource["resourceType"]):
        if rule.rule.trigger == "new" and not case.new:
            continue
        ev = rule.evaluate(resource, "test", now, lookup)
        if ev.error:
            result.failures.append(f"{rule.id}: evaluation failed: {ev.error}")
        elif ev.draft is not None:
            got[rule.id] = ev.draft
        elif (closing := rule.close_case(ev)) is not None:
            closed[rule.id] = closing.status.value
    for rule_id, fields in case.expect.items():
        if rule_id not in got:
            result.failures.append(f"{rule_id}: expected a task, got none")
            continue
        for name, want in fields.items():
            if name not in _FIELDS:
                result.failures.append(f"{rule_id}: unknown task field {name!r} in the test")
                continue
            have = _value(got[rule_id], name)
            if have != _expected(want):
                result.failures.append(f"{rule_id}: task.{name}: expected {want!r}, got {have!r}")
    for rule_id in sorted(set(got) - set(case.expect)):
        result.failures.append(f"{rule_id}: unexpected task {got[rule_id].title!r}")
    for rule_id, status in case.close.items():
        if closed.get(rule_id) != status:
            result.failures.append(
                f"{rule_id}: expected the task to close as {status!r}, got {closed.get(rule_id)!r}"
            )
    return result


def run_folder(folder: Path, rules: RuleSet) -> list[CaseResult]:
    """Run every `*.yaml` golden test file in `folder`."""
    results: list[CaseResult] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            spec = _File.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            results.append(CaseResult(str(path), "(file)", [f"not a valid test file: {exc}"]))
            continue
        default_now = spec.now or datetime.now(UTC)
        for case in spec.cases:
            results.append(run_case(case, rules, path.parent, str(path), default_now))
    return results
