"""Compile mapping rules once, evaluate them against resources, produce task drafts.

Pure: no HTTP, no storage. FHIRPath is `fhirpathpy`, compiled once per expression at load
time so a typo fails at start-up with file, rule and key, not on the first message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models
from pydantic import ValidationError

from fhir_bridge.errors import MappingError
from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.model import MappingFile, Rule
from fhir_bridge.mapping.syntax import fhirpath_syntax_errors
from fhir_bridge.tasks.model import TaskDraft
from fhir_bridge.validate.parse import is_known_type

log = get_logger("mapping")

FhirPath = Callable[[dict[str, Any], dict[str, Any]], list[Any]]
_INTERPOLATION = re.compile(r"\{\{(.+?)\}\}")
_R4 = models["r4"]


def _compile(expr: str, *, file: str, rule: str, key: str) -> FhirPath:
    errors = fhirpath_syntax_errors(expr)
    if errors:
        message = f"FHIRPath does not compile: {expr!r}: {'; '.join(errors)}"
        raise MappingError(message, file=file, rule=rule, key=key)
    try:
        fn: FhirPath = fhirpath_compile(expr, model=_R4)
    except Exception as exc:
        raise MappingError(
            f"FHIRPath does not compile: {exc}", file=file, rule=rule, key=key
        ) from None
    return fn


def _parse_when(value: Any) -> datetime | None:
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


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its FHIRPath expressions compiled."""

    rule: Rule
    file: str
    when: FhirPath
    patient: FhirPath
    due: FhirPath | None
    title_parts: tuple[str | FhirPath, ...]

    @property
    def id(self) -> str:
        """The rule id."""
        return self.rule.id

    @classmethod
    def build(cls, rule: Rule, file: str) -> CompiledRule:
        """Compile every expression of `rule`."""
        if not is_known_type(rule.resource):
            raise MappingError(
                f"unknown FHIR resource type {rule.resource!r}",
                file=file,
                rule=rule.id,
                key="resource",
            )
        parts: list[str | FhirPath] = []
        pos = 0
        for match in _INTERPOLATION.finditer(rule.task.title):
            parts.append(rule.task.title[pos : match.start()])
            parts.append(
                _compile(match.group(1).strip(), file=file, rule=rule.id, key="task.title")
            )
            pos = match.end()
        parts.append(rule.task.title[pos:])
        return cls(
            rule=rule,
            file=file,
            when=_compile(rule.when, file=file, rule=rule.id, key="when"),
            patient=_compile(rule.task.patient, file=file, rule=rule.id, key="task.patient"),
            due=_compile(rule.task.due, file=file, rule=rule.id, key="task.due")
            if rule.task.due
            else None,
            title_parts=tuple(parts),
        )

    def matches(self, resource: dict[str, Any], env: dict[str, Any]) -> bool:
        """True when `when` evaluates to exactly `true`."""
        return self.when(resource, env) == [True]

    def draft(self, resource: dict[str, Any], source: str, env: dict[str, Any]) -> TaskDraft:
        """The task draft for a matching resource."""
        patient = self.patient(resource, env)
        due = self.due(resource, env) if self.due else []
        title = "".join(
            p if isinstance(p, str) else ", ".join(str(v) for v in p(resource, env))
            for p in self.title_parts
        )
        tpl = self.rule.task
        return TaskDraft(
            rule_id=self.rule.id,
            source=source,
            focus_type=resource["resourceType"],
            focus_id=resource["id"],
            focus_version=(resource.get("meta") or {}).get("versionId"),
            patient=str(patient[0]) if patient else None,
            queue=tpl.queue,
            kind=tpl.kind,
            title=title.strip(),
            priority=tpl.priority,
            due=_parse_when(due[0]) if due else None,
        )


@dataclass(frozen=True)
class Decision:
    """One rule's verdict on one resource: a draft, or None with the reason."""

    rule_id: str
    draft: TaskDraft | None
    reason: str


class RuleSet:
    """All rules loaded from the mapping files, indexed by resource type."""

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        self.rules = list(rules)
        self._by_type: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            self._by_type.setdefault(rule.rule.resource, []).append(rule)

    @classmethod
    def load(cls, folder: Path) -> RuleSet:
        """Load every `*.yaml`/`*.yml` file in `folder` (sorted by name).

        :raises MappingError: naming the file, rule and key of the first problem.
        """
        if not folder.is_dir():
            raise MappingError("mappings folder not found", file=str(folder))
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        if not files:
            raise MappingError("no mapping files (*.yaml) in folder", file=str(folder))
        compiled: list[CompiledRule] = []
        seen: dict[str, str] = {}
        for path in files:
            for rule in _read_file(path):
                if rule.id in seen:
                    raise MappingError(
                        f"duplicate rule id (first defined in {seen[rule.id]})",
                        file=str(path),
                        rule=rule.id,
                        key="id",
                    )
                seen[rule.id] = str(path)
                compiled.append(CompiledRule.build(rule, str(path)))
        return cls(compiled)

    @property
    def resource_types(self) -> set[str]:
        """The resource types some rule reads."""
        return set(self._by_type)

    @property
    def queues(self) -> set[str]:
        """The queues some rule fills."""
        return {r.rule.task.queue for r in self.rules}

    def decide(self, resource: dict[str, Any], source: str, now: datetime) -> list[Decision]:
        """Every applicable rule's verdict on `resource`, evaluated at `now`."""
        env = {"now": now.astimezone(UTC).isoformat()}
        decisions = []
        for rule in self._by_type.get(resource.get("resourceType", ""), ()):
            try:
                if rule.matches(resource, env):
                    decisions.append(
                        Decision(rule.id, rule.draft(resource, source, env), "matched")
                    )
                else:
                    decisions.append(Decision(rule.id, None, "condition 'when' is not true"))
            except Exception as exc:
                log.warning(
                    "rule_evaluation_failed",
                    rule=rule.id,
                    resource_type=resource.get("resourceType"),
                    resource_id=resource.get("id"),
                    error=type(exc).__name__,
                )
                decisions.append(
                    Decision(rule.id, None, f"evaluation failed: {type(exc).__name__}")
                )
        return decisions

    def evaluate(self, resource: dict[str, Any], source: str, now: datetime) -> list[TaskDraft]:
        """The task drafts `resource` calls for."""
        return [d.draft for d in self.decide(resource, source, now) if d.draft is not None]


def _read_file(path: Path) -> list[Rule]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise MappingError(f"YAML syntax error: {exc.problem}", file=where) from None
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"cannot read: {exc}", file=str(path)) from None
    try:
        return MappingFile.model_validate(data).rules
    except ValidationError as exc:
        err = exc.errors(include_input=False)[0]
        loc = list(err["loc"])
        rule = None
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            raw = data["rules"][loc[1]] if isinstance(data, dict) else None
            rule = (
                str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") else f"#{loc[1] + 1}"
            )
            loc = loc[2:]
        key = ".".join(str(p) for p in loc) or None
        extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise MappingError(err["msg"] + extra, file=str(path), rule=rule, key=key) from None
