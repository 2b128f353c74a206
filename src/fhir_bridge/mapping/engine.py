"""Load mapping folders into a `RuleSet`; evaluate rules against resources.

Pure: no HTTP, no storage. A rule that needs the patient's other resources gets them through
the small `Lookup` interface the caller hands in. Every FHIRPath is compiled once at load
time; every problem is reported with `file:line:column: rule: key: message`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError

from fhir_bridge.errors import MappingError
from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.conceptmaps import ConceptMaps
from fhir_bridge.mapping.expr import (
    Expr,
    ExpressionError,
    Functions,
    LazyEnv,
    Template,
    compile_expr,
    compile_template,
)
from fhir_bridge.mapping.guard import Guard, build_guard
from fhir_bridge.mapping.locate import Positions
from fhir_bridge.mapping.messages import MESSAGES_DIR, Messages
from fhir_bridge.mapping.model import MappingFile, Queue, QueuesFile, Rule
from fhir_bridge.tasks.model import Priority, TaskDraft, TaskStatus, task_id
from fhir_bridge.validate.parse import is_known_type

log = get_logger("mapping")

QUEUES_FILE = "queues.yaml"
ACTION_VARIABLES = ("note", "coordinator", "task")  # given to on_status actions by write-back
# `%family`: the patient's contacts the patient authorized us to tell (patients/contacts.py),
# computed on first use from the lookup (Patient, RelatedPerson, Consent; coordinators' flags).
FAMILY = "family"
CONCEPTMAPS_DIR = "conceptmaps"
TESTS_DIR = "tests"
_PRIORITIES = {p.value for p in Priority}


class Lookup(Protocol):
    """Access to resources already in the store, for rules with `related`."""

    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]:
        """The patient's resources of `resource_type` (from the same source)."""


class NoLookup:
    """A lookup that knows nothing (explain and tests without a store)."""

    def __init__(self, resources: Iterable[dict[str, Any]] = ()) -> None:
        self.resources = list(resources)

    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]:
        """Resources given at construction whose patient reference is `patient`."""
        from fhir_bridge.patients.refs import patient_reference

        return [
            r
            for r in self.resources
            if r.get("resourceType") == resource_type and patient_reference(r) == patient
        ]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a mapping file."""

    file: str
    line: int
    column: int
    rule: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: {self.rule or '-'}: "
        return where + (f"{self.key}: " if self.key else "") + self.message


@dataclass(frozen=True)
class CloseCase:
    """A compiled `close_when` case."""

    condition: Expr | None
    status: TaskStatus
    reason: str


@dataclass
class Evaluation:
    """Everything one rule computed for one resource (explain shows it all)."""

    rule_id: str
    values: dict[str, Any] = field(default_factory=dict)
    matched: bool = False
    draft: TaskDraft | None = None
    close: CloseCase | None = None
    reason: str = ""
    error: str | None = None
    scope: _Scope | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class CompiledRule:
    """A rule with every expression compiled."""

    rule: Rule
    file: str
    lets: tuple[tuple[str, Expr], ...]
    related: tuple[tuple[str, str, Expr | None], ...]
    related_guards: Mapping[str, Guard]
    when: Expr
    patient: Expr
    title: Template
    description: Template | None
    labels: tuple[Template, ...]
    assignee: Template | None
    priority: Priority | Expr
    due: Expr | None
    close_cases: tuple[CloseCase, ...]
    on_status: Mapping[TaskStatus, tuple[dict[str, Any], ...]]
    guard: Guard

    @property
    def id(self) -> str:
        """The rule id."""
        return self.rule.id

    @property
    def resource_type(self) -> str:
        """The resource type the rule reads."""
        return self.rule.resource

    def task_id(self, source: str, resource: Mapping[str, Any]) -> str:
        """The id the task for `resource` has (whether or not it exists)."""
        return task_id(self.id, source, self.resource_type, str(resource.get("id")))

    def evaluate(
        self,
        resource: dict[str, Any],
        source: str,
        now: datetime,
        lookup: Lookup,
        *,
        full: bool = False,
    ) -> Evaluation:
        """Evaluate the rule on `resource`: a draft when `when` holds.

        Names (`let`, `related`, the patient) are computed only when an expression needs
        them, and the guard skips `when` for resources that cannot match. When `when` does
        not hold, call `close_case(ev)` to learn how an active task would close.

        :param full: compute every name even if unused, and the close case (for explain).
        """
        ev = Evaluation(self.id)
        scope = _Scope(self, resource, lookup, ev)
        scope.env.update(now=_instant_text(now), source=source)
        try:
            if full:
                scope.need(self.names, "let")
                scope.patient()
            failed = self.guard.fails(resource)
            if failed is not None and not full:
                ev.reason = f"'when' is not true ({failed} is not one of its values)"
                ev.scope = scope
                return ev
            scope.step = "when"  # names are computed as `when` reaches them (lazy env)
            result = self.when(resource, scope.env)
            ev.values["when"] = result
            ev.matched = result == [True]
            if ev.matched:
                ev.draft = self._draft(resource, source, scope, ev)
                ev.reason = "'when' is true"
            else:
                ev.reason = "'when' is not true" + ("" if result else " (empty)")
                ev.scope = scope
                if full:
                    ev.close = self.close_case(ev)
        except Exception as exc:  # fhirpathpy raises bare Exception at run time
            ev.error = f"{scope.step}: {type(exc).__name__}: {exc}"
            ev.reason = f"evaluation failed at {scope.step}"
            ev.matched = False
            ev.draft = None
            ev.close = None
        return ev

    @cached_property
    def let_table(self) -> dict[str, Expr]:
        """The `let` expressions by name (read only)."""
        return dict(self.lets)

    @cached_property
    def related_table(self) -> dict[str, tuple[str, Expr | None]]:
        """The `related` (type, where) by name (read only)."""
        return {name: (rtype, where) for name, rtype, where in self.related}

    @property
    def names(self) -> list[str]:
        """Every `let` and `related` name, in definition order."""
        return [n for n, _ in self.lets] + [n for n, _, _ in self.related]

    def close_case(self, ev: Evaluation) -> CloseCase | None:
        """How an active task closes for a resource `when` does not match (None: stays open)."""
        scope = ev.scope
        if scope is None or ev.matched or ev.error:
            return None
        try:
            for index, case in enumerate(self.close_cases):
                if case.condition is None:
                    return case
                scope.need(case.condition.variables, f"close_when[{index}]")
                scope.step = f"close_when[{index}]"
                holds = case.condition(scope.resource, scope.env)
                ev.values[f"close_when[{index}]"] = holds
                if holds == [True]:
                    return case
        except Exception as exc:  # fhirpathpy raises bare Exception at run time
            ev.error = f"{scope.step}: {type(exc).__name__}: {exc}"
        return None

    def _draft(
        self, resource: dict[str, Any], source: str, scope: _Scope, ev: Evaluation
    ) -> TaskDraft:
        env = scope.env
        patient = scope.patient()
        tpl = self.rule.task
        if isinstance(self.priority, Priority):
            priority = self.priority
        else:
            scope.need(self.priority.variables, "task.priority")
            scope.step = "task.priority"
            value = self.priority(resource, env)
            ev.values["task.priority"] = value
            if not value or str(value[0]) not in _PRIORITIES:
                raise ValueError(f"priority expression gave {value!r}, not one of {_PRIORITIES}")
            priority = Priority(str(value[0]))
        due_values: list[Any] = []
        if self.due:
            scope.need(self.due.variables, "task.due")
            scope.step = "task.due"
            due_values = self.due(resource, env)
        ev.values["task.due"] = due_values

        def render(template: Template | None, key: str) -> str | None:
            if template is None:
                return None
            scope.need(template.variables, key)
            scope.step = key
            return template.render(resource, env)

        labels = tuple(sorted({render(t, "task.labels") or "" for t in self.labels} - {""}))
        return TaskDraft(
            rule_id=self.id,
            source=source,
            focus_type=self.resource_type,
            focus_id=str(resource["id"]),
            focus_version=(resource.get("meta") or {}).get("versionId"),
            patient=patient,
            queue=tpl.queue,
            kind=tpl.kind,
            title=render(self.title, "task.title") or "",
            priority=priority,
            due=parse_when(due_values[0]) if due_values else None,
            description=render(self.description, "task.description"),
            labels=labels,
            assignee=render(self.assignee, "task.assignee") or None,
        )


class _Scope:
    """The variables of one evaluation, computed on first use.

    Nothing it holds points back at it or at its `Evaluation` (the values dict, not the
    evaluation; the env by a weak reference): without a cycle, an evaluation and the
    resource it read are freed as soon as they are dropped, not by the garbage collector
    (a 10k first load left ~190,000 objects in such cycles: 32 young collections, now 25).
    """

    def __init__(
        self, rule: CompiledRule, resource: dict[str, Any], lookup: Lookup, ev: Evaluation
    ) -> None:
        self.rule = rule
        self.resource = resource
        self.lookup = lookup
        self.values = ev.values  # what explain shows, by name
        self.env: dict[str, Any] = _ScopeEnv(self)
        self.step = "let"
        self._lets = rule.let_table
        self._related = rule.related_table
        self._patient: tuple[str | None] | None = None

    def patient(self) -> str | None:
        """The task's patient reference (evaluated once)."""
        if self._patient is None:
            expr = self.rule.patient
            self.need(expr.variables, "task.patient")
            self.step = "task.patient"
            values = expr(self.resource, self.env)
            self.values["task.patient"] = values
            self._patient = (str(values[0]) if values else None,)
        return self._patient[0]

    def need(self, names: Iterable[str], step: str) -> None:
        """Compute each of `names` (and what they depend on) unless already known."""
        for name in names:
            if name in self.env:
                continue
            if name in self._lets:
                expr = self._lets[name]
                self.need(expr.variables, step)
                self.step = f"let.{name}"
                self.env[name] = self.values[f"%{name}"] = expr(self.resource, self.env)
            elif name == FAMILY:
                from fhir_bridge.patients.contacts import rule_contacts

                self.env[name] = rule_contacts(self.lookup, self.patient())
                self.values[f"%{name}"] = [c["reference"] for c in self.env[name]]
            elif name in self._related:
                rtype, where = self._related[name]
                patient = self.patient()
                found = self.lookup.for_patient(rtype, patient) if patient else []
                if where is not None:
                    self.need(where.variables, step)
                    self.step = f"related.{name}"
                    guard = self.rule.related_guards[name]
                    found = [r for r in found if _holds(guard, where, r, self.env)]
                self.env[name] = found
                self.values[f"%{name}"] = [f"{r['resourceType']}/{r.get('id')}" for r in found]


class _ScopeEnv(LazyEnv):
    """A scope's variables: a rule's name is computed when an expression first reads it."""

    def __init__(self, scope: _Scope) -> None:
        super().__init__()
        self._scope = weakref.ref(scope)  # not a cycle: see _Scope

    def __missing__(self, name: str) -> Any:
        scope = self._scope()
        if scope is None:  # only while its scope lives is an env read
            raise KeyError(name)
        step = scope.step
        scope.need((name,), step)
        scope.step = step  # what fails later is still the expression that asked
        return dict.__getitem__(self, name)  # KeyError: not one of the rule's names


def _holds(guard: Guard, expr: Expr, resource: dict[str, Any], env: dict[str, Any]) -> bool:
    """`expr` is true on `resource`, asking the guard first (it often settles it alone)."""
    settled = guard.decide(resource)
    if settled is not None:
        return settled
    return expr(resource, env) == [True]


@lru_cache(maxsize=8)
def _instant_text(now: datetime) -> str:
    """`%now` as text (one clock reading serves a whole page of evaluations)."""
    return now.astimezone(UTC).isoformat()


def parse_when(value: Any) -> datetime | None:
    """A FHIRPath date/dateTime result as an aware datetime (dates at 00:00 UTC)."""
    text = str(value)
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class RuleSet:
    """All rules of a mapping folder, indexed by resource type, with their queues."""

    def __init__(
        self,
        rules: Iterable[CompiledRule],
        queues: Mapping[str, Queue] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.rules = list(rules)
        self.queue_info = dict(queues or {})
        self.folder = folder
        self._by_type: dict[str, list[CompiledRule]] = {}
        self._dependents: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            self._by_type.setdefault(rule.resource_type, []).append(rule)
            for _, rtype, _ in rule.related:
                self._dependents.setdefault(rtype, []).append(rule)

    @classmethod
    def load(cls, folder: Path) -> RuleSet:
        """Load a mapping folder; raise `MappingError` listing every problem."""
        ruleset, problems = compile_folder(folder)
        if problems:
            first = problems[0]
            more = "".join(f"\n  {p}" for p in problems[1:])
            raise MappingError(
                f"{first.message}{more}",
                file=f"{first.file}:{first.line}:{first.column}",
                rule=first.rule,
                key=first.key,
            )
        assert ruleset is not None  # noqa: S101  (no problems means a rule set)
        return ruleset

    @property
    def resource_types(self) -> set[str]:
        """The resource types some rule reads."""
        return set(self._by_type)

    @property
    def queues(self) -> set[str]:
        """Declared queues plus the queues rules fill."""
        return set(self.queue_info) | {r.rule.task.queue for r in self.rules}

    def get(self, rule_id: str) -> CompiledRule | None:
        """The rule with that id, or None."""
        return next((r for r in self.rules if r.id == rule_id), None)

    def for_type(self, resource_type: str) -> list[CompiledRule]:
        """Rules that read `resource_type`."""
        return self._by_type.get(resource_type, [])

    def dependents(self, resource_type: str) -> list[CompiledRule]:
        """Rules whose `related` reads `resource_type` (re-evaluated when one changes)."""
        return self._dependents.get(resource_type, [])

    def evaluate(
        self,
        resource: dict[str, Any],
        source: str,
        now: datetime,
        lookup: Lookup | None = None,
    ) -> list[TaskDraft]:
        """The task drafts `resource` calls for (all rules of its type)."""
        drafts = []
        for rule in self.for_type(str(resource.get("resourceType", ""))):
            ev = rule.evaluate(resource, source, now, lookup or NoLookup())
            if ev.draft is not None:
                drafts.append(ev.draft)
        return drafts


# -- loading --------------------------------------------------------------------------------


@dataclass
class _FileContext:
    path: Path
    positions: Positions
    problems: list[Problem]

    def add(self, loc: Sequence[str | int], rule: str | None, key: str | None, msg: str) -> None:
        line, column = self.positions.of(loc)
        self.problems.append(Problem(str(self.path), line, column, rule, key, msg))


def _read(path: Path, problems: list[Problem]) -> tuple[Any, Positions] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(str(path), 1, 1, None, None, f"cannot read: {exc.strerror}"))
        return None
    try:
        return yaml.safe_load(text), Positions(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(Problem(str(path), line, col, None, None, f"YAML syntax: {exc.problem}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(str(path), 1, 1, None, None, f"YAML syntax: {exc}"))
    return None


def _schema_problems(exc: ValidationError, data: Any, ctx: _FileContext, top: str) -> None:
    for err in exc.errors(include_input=False):
        loc = list(err["loc"])
        rule = None
        rest = loc
        if len(loc) >= 2 and loc[0] == top and isinstance(loc[1], int):
            raw = data[top][loc[1]] if isinstance(data, dict) else None
            rule = str(raw["id"]) if isinstance(raw, dict) and raw.get("id") else f"#{loc[1] + 1}"
            rest = loc[2:]
        # Pydantic adds the union member's name to the location of tagged unions: drop them.
        key = ".".join(str(p) for p in rest if not _is_union_tag(p)) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            line, column = ctx.positions.key(loc)
            ctx.problems.append(Problem(str(ctx.path), line, column, rule, key, msg))
            continue
        if err["type"] == "missing":
            msg = "required key is missing"
        ctx.add(loc, rule, key, msg)


def _is_union_tag(part: object) -> bool:
    """Pydantic puts the union member's name into error locations (`tuple[...]`, `literal[...]`)."""
    return isinstance(part, str) and ("[" in part or part == "CloseWhen")


def _load_queues(folder: Path, problems: list[Problem]) -> dict[str, Queue]:
    path = folder / QUEUES_FILE
    if not path.is_file():
        problems.append(
            Problem(str(path), 1, 1, None, None, "missing: declare the queues rules may fill")
        )
        return {}
    read = _read(path, problems)
    if read is None:
        return {}
    data, positions = read
    try:
        return dict(QueuesFile.model_validate(data).queues)
    except ValidationError as exc:
        _schema_problems(exc, data, _FileContext(path, positions, problems), "queues")
        return {}


def rule_files(folder: Path) -> list[Path]:
    """The rule files of a mapping folder (every *.yaml but queues.yaml), sorted."""
    files = [*folder.glob("*.yaml"), *folder.glob("*.yml")]
    return sorted(p for p in files if p.name != QUEUES_FILE)


def compile_folder(
    folder: Path, files: Sequence[Path] | None = None
) -> tuple[RuleSet | None, list[Problem]]:
    """Compile a mapping folder (or some of its files); return the rules and every problem."""
    problems: list[Problem] = []
    if not folder.is_dir():
        return None, [Problem(str(folder), 1, 1, None, None, "mappings folder not found")]
    queues = _load_queues(folder, problems)
    try:
        concept_maps = ConceptMaps.load(folder / CONCEPTMAPS_DIR)
    except MappingError as exc:
        problems.append(Problem(exc.file, 1, 1, None, None, str(exc).split(": ", 1)[-1]))
        concept_maps = ConceptMaps()
    try:  # the plain-language message templates of `message()` (mapping/messages.py)
        messages = Messages.load(folder / MESSAGES_DIR)
    except MappingError as exc:
        problems.append(Problem(exc.file, 1, 1, None, None, str(exc).split(": ", 1)[-1]))
        messages = Messages()
    functions = {**concept_maps.functions(), **messages.functions()}
    paths = list(files) if files is not None else rule_files(folder)
    if not paths:
        problems.append(Problem(str(folder), 1, 1, None, None, "no mapping files (*.yaml)"))
    compiled: list[CompiledRule] = []
    seen: dict[str, str] = {}
    for path in paths:
        read = _read(path, problems)
        if read is None:
            continue
        data, positions = read
        ctx = _FileContext(path, positions, problems)
        try:
            rules = MappingFile.model_validate(data).rules
        except ValidationError as exc:
            _schema_problems(exc, data, ctx, "rules")
            continue
        for index, rule in enumerate(rules):
            loc: list[str | int] = ["rules", index]
            if rule.id in seen:
                ctx.add([*loc, "id"], rule.id, "id", f"duplicate rule id (also in {seen[rule.id]})")
                continue
            seen[rule.id] = str(path)
            if queues and rule.task.queue not in queues:
                known = ", ".join(sorted(queues))
                ctx.add(
                    [*loc, "task", "queue"],
                    rule.id,
                    "task.queue",
                    f"unknown queue {rule.task.queue!r} (declared in {QUEUES_FILE}: {known})",
                )
            built = _compile_rule(rule, ctx, loc, functions)
            if built is not None:
                compiled.append(built)
    if problems:
        return None, problems
    return RuleSet(compiled, queues, folder), []


def _compile_rule(
    rule: Rule, ctx: _FileContext, loc: list[str | int], functions: Functions
) -> CompiledRule | None:
    before = len(ctx.problems)
    rtype = rule.resource
    if not is_known_type(rtype):
        ctx.add([*loc, "resource"], rule.id, "resource", f"unknown FHIR resource type {rtype!r}")
        return None
    names: list[str] = [FAMILY]

    def expr(text: str, key: Sequence[str | int], on: str | None = rtype) -> Expr | None:
        try:
            return compile_expr(text, on, names, functions)
        except ExpressionError as exc:
            ctx.add([*loc, *key], rule.id, ".".join(map(str, key)), f"FHIRPath: {exc}")
            return None

    def template(text: str | None, key: Sequence[str | int]) -> Template | None:
        if text is None:
            return None
        try:
            return compile_template(text, rtype, names, functions)
        except ExpressionError as exc:
            ctx.add([*loc, *key], rule.id, ".".join(map(str, key)), f"FHIRPath: {exc}")
            return None

    lets = []
    for name, text in rule.let.items():
        compiled = expr(text, ["let", name])
        names.append(name)
        if compiled is not None:
            lets.append((name, compiled))
    patient = expr(rule.task.patient, ["task", "patient"])
    related = []
    for name, rel in rule.related.items():
        if not is_known_type(rel.resource):
            ctx.add(
                [*loc, "related", name, "resource"],
                rule.id,
                f"related.{name}.resource",
                f"unknown FHIR resource type {rel.resource!r}",
            )
            continue
        where = expr(rel.where, ["related", name, "where"], rel.resource) if rel.where else None
        related.append((name, rel.resource, where))
        names.append(name)
    when = expr(rule.when, ["when"])
    tpl = rule.task
    priority: Priority | Expr | None
    if tpl.priority in _PRIORITIES:
        priority = Priority(tpl.priority)
    else:
        priority = expr(tpl.priority, ["task", "priority"])
    due = expr(tpl.due, ["task", "due"]) if tpl.due else None
    title = template(tpl.title, ["task", "title"])
    description = template(tpl.description, ["task", "description"])
    labels = tuple(
        t for i, text in enumerate(tpl.labels) if (t := template(text, ["task", "labels", i]))
    )
    assignee = template(tpl.assignee, ["task", "assignee"])
    cases = _close_cases(rule, expr)

    def action_expr(text: str, key: Sequence[str | int], on: str | None = rtype) -> Expr | None:
        # Write-back actions also see the coordinator's %note and %coordinator id.
        try:
            return compile_expr(text, on, [*names, *ACTION_VARIABLES], functions)
        except ExpressionError as exc:
            ctx.add([*loc, *key], rule.id, ".".join(map(str, key)), f"FHIRPath: {exc}")
            return None

    on_status = _on_status(rule, ctx, loc, action_expr)
    if len(ctx.problems) > before:
        return None
    assert when and patient and title and priority is not None  # noqa: S101  (no problems)
    return CompiledRule(
        rule=rule,
        file=str(ctx.path),
        lets=tuple(lets),
        related=tuple(related),
        related_guards={
            name: build_guard(where.text) for name, _, where in related if where is not None
        },
        when=when,
        patient=patient,
        title=title,
        description=description,
        labels=labels,
        assignee=assignee,
        priority=priority,
        due=due,
        close_cases=cases,
        on_status=on_status,
        guard=build_guard(rule.when),
    )


def _close_cases(rule: Rule, expr: Any) -> tuple[CloseCase, ...]:
    if rule.close_when == "never":
        return ()
    cases = []
    for index, case in enumerate(rule.close_when):
        condition = (
            expr(case.condition, ["close_when", index, "condition"]) if case.condition else None
        )
        cases.append(CloseCase(condition, TaskStatus(case.status), case.reason))
    return tuple(cases)


def _on_status(
    rule: Rule, ctx: _FileContext, loc: list[str | int], expr: Any
) -> dict[TaskStatus, tuple[dict[str, Any], ...]]:
    """Validate `on_status` actions (write-back executes them); keep them as plain data."""
    out: dict[TaskStatus, tuple[dict[str, Any], ...]] = {}
    for status, actions in rule.on_status.items():
        kept = []
        for index, action in enumerate(actions):
            key: list[str | int] = ["on_status", status.value, index]
            if action.update_focus is not None:
                for path, value in action.update_focus.set.items():
                    expr(path, [*key, "update_focus", "set", path])
                    expr(value, [*key, "update_focus", "set", path])
            elif action.task_output is not None:
                expr(action.task_output.value, [*key, "task_output", "value"])
            elif action.create is not None:
                created = action.create.resourceType
                if not is_known_type(created):
                    ctx.add(
                        [*loc, *key, "create", "resourceType"],
                        rule.id,
                        f"on_status.{status.value}.{index}.create.resourceType",
                        f"unknown FHIR resource type {created!r}",
                    )
                _templates_in(action.create, key, expr)
            kept.append(action.model_dump(mode="json", exclude_none=True))
        out[status] = tuple(kept)
    return out


def _templates_in(model: BaseModel, key: list[str | int], expr: Any) -> None:
    """Compile every `{{ }}` part inside a `create` template (validation only)."""
    from fhir_bridge.mapping.expr import _INTERPOLATION

    def walk(value: Any, path: list[str | int]) -> None:
        if isinstance(value, str):
            for match in _INTERPOLATION.finditer(value):
                expr(match.group(1).strip(), path, None)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, [*path, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, [*path, i])

    walk(model.model_dump(mode="json"), [*key, "create"])


def load_error_summary(problems: Sequence[Problem]) -> str:
    """All problems, one per line (for logs and the CLI)."""
    return "\n".join(str(p) for p in problems)
