"""One page of resources through validate -> store -> mapping -> queues.

Called by the sync loop (and later by bulk and file ingest). Synchronous and free of HTTP:
the caller fetched the page; this decides what to keep and which tasks it calls for.

For each rule of a stored resource's type:
- `when` holds: the task is created, or refreshed if it is still active; a closed task is
  reopened only by a rule with `reopen_on_change` and only when the resource itself changed;
- `when` does not hold: an active task closes with the rule's `close_when` case and reason.
A resource that rules of *other* types read through `related` (a Coverage for the
pre-visit check) re-evaluates those rules over the same patient's resources.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import CompiledRule, RuleSet
from fhir_bridge.patients.refs import patient_reference
from fhir_bridge.store.base import QuarantineEntry, Store
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.parse import Issue, validate_resource
from fhir_bridge.validate.profiles import ProfileSet

log = get_logger("ingest")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def content_hash(resource: dict[str, Any]) -> str:
    """A hash of the resource's content, blind to `meta.versionId` and `meta.lastUpdated`.

    Servers bump the version on a no-op PUT; hashing without those two keeps such a
    re-save from re-running every rule.
    """
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = {**resource, "meta": meta}
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


_COUNTERS = (
    "received",
    "stored",
    "unchanged",
    "quarantined",
    "tasks_created",
    "tasks_updated",
    "tasks_closed",
    "tasks_reopened",
    "rule_errors",
)


@dataclass
class IngestResult:
    """What one page (or one re-evaluation) did."""

    received: int = 0
    stored: int = 0
    unchanged: int = 0
    quarantined: int = 0
    tasks_created: int = 0
    tasks_updated: int = 0
    tasks_closed: int = 0
    tasks_reopened: int = 0
    rule_errors: int = 0
    max_last_updated: str | None = None
    tasks_by_rule: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestResult) -> None:
        """Accumulate another page's figures (max_last_updated is the later of the two)."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for rule, n in other.tasks_by_rule.items():
            self.tasks_by_rule[rule] = self.tasks_by_rule.get(rule, 0) + n
        self.max_last_updated = later(self.max_last_updated, other.max_last_updated)


def later(a: str | None, b: str | None) -> str | None:
    """The later of two FHIR instants (None counts as earliest)."""
    if a is None or b is None:
        return a or b
    return a if parse_instant(a) >= parse_instant(b) else b


def parse_instant(value: str) -> datetime:
    """A FHIR instant/dateTime as an aware datetime (naive values are taken as UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class StoreLookup:
    """`mapping.Lookup` over the store: a patient's resources from one source."""

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source

    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]:
        """The patient's stored resources of `resource_type`."""
        return [
            r.body for r in self.store.resources_for_patient(self.source, patient, resource_type)
        ]


@dataclass(frozen=True)
class ProfilePolicy:
    """What a source requires beyond parsing: profiles, and what a violation does."""

    profiles: tuple[str, ...] = ()
    quarantine: bool = True  # False: store the resource and log the issue counts


_DEFAULT_POLICY = ProfilePolicy()


class Ingestor:
    """Validates, stores and maps resources for one bridge.

    :param profile_set: profiles and value sets; None checks structure only.
    :param policies: per source name; sources not listed get the core checks and quarantine.
    """

    def __init__(
        self,
        store: Store,
        rules: RuleSet,
        tasks: TaskService,
        clock: Clock = utcnow,
        *,
        profile_set: ProfileSet | None = None,
        policies: Mapping[str, ProfilePolicy] | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.tasks = tasks
        self.clock = clock
        self.profile_set = profile_set
        self.policies = dict(policies or {})

    def check(self, source: str, resource: Any, expected_type: str | None) -> list[Issue]:
        """The issues that keep `resource` out of the store (errors first); empty: store it.

        Structure (R4B parse) always quarantines; core required bindings and the source's
        profiles quarantine unless the source is set to warn.
        """
        issues = validate_resource(resource, expected_type)
        if issues or self.profile_set is None:
            return issues
        policy = self.policies.get(source, _DEFAULT_POLICY)
        checked = self.profile_set.check_all(resource, policy.profiles)
        errors = [i for i in checked if i["severity"] == "error"]
        if not errors:
            return []
        if not policy.quarantine:
            log.warning(
                "profile_violation_stored",
                source=source,
                resource_type=resource.get("resourceType"),
                resource_id=resource.get("id"),
                issues=len(errors),
                first_issue=errors[0]["expression"],
            )
            return []
        return sorted(checked, key=lambda i: i["severity"] != "error")

    def ingest(
        self,
        source: str,
        resources: Iterable[Any],
        expected_type: str | None = None,
        *,
        initial: bool = False,
    ) -> IngestResult:
        """Take a page of resources from `source`; never raises for a bad resource.

        :param initial: the source's first load of this type: rules with `trigger: new`
            do not fire for what is merely being loaded for the first time.
        """
        result = IngestResult()
        now = self.clock()
        lookup = StoreLookup(self.store, source)
        # (rule id, patient) pairs whose `related` resources changed in this page; evaluated
        # once each after the page, however many of the patient's resources arrived.
        dependents: dict[tuple[str, str], CompiledRule] = {}
        with self.store.batch():
            for resource in resources:
                result.received += 1
                self._one(source, resource, expected_type, now, lookup, initial, result, dependents)
            for (_, patient), rule in dependents.items():
                for other in self.store.resources_for_patient(source, patient, rule.resource_type):
                    self._apply(rule, source, other.body, now, lookup, result, focus_changed=False)
        return result

    def reevaluate(self, source: str | None = None) -> IngestResult:
        """Run every rule again over every stored resource (time moves conditions on:
        a no-show leaves its lookback window, a booked visit comes within 7 days)."""
        result = IngestResult()
        now = self.clock()
        for rtype in sorted(self.rules.resource_types):
            for stored in self.store.iter_resources(rtype, source):
                lookup = StoreLookup(self.store, stored.source)
                for rule in self.rules.for_type(rtype):
                    self._apply(
                        rule, stored.source, stored.body, now, lookup, result, focus_changed=False
                    )
        return result

    def _one(
        self,
        source: str,
        resource: Any,
        expected_type: str | None,
        now: datetime,
        lookup: StoreLookup,
        initial: bool,
        result: IngestResult,
        dependents: dict[tuple[str, str], CompiledRule],
    ) -> None:
        issues = self.check(source, resource, expected_type)
        if isinstance(resource, dict):
            last_updated = (resource.get("meta") or {}).get("lastUpdated")
            if isinstance(last_updated, str):
                try:
                    result.max_last_updated = later(result.max_last_updated, last_updated)
                except ValueError:
                    pass  # the parse check reports the bad instant
        if issues:
            result.quarantined += 1
            self._quarantine(source, resource, expected_type, issues, now)
            return
        rtype, rid = resource["resourceType"], resource["id"]
        rules = self.rules.for_type(rtype)
        watch_new = any(r.rule.trigger == "new" for r in rules)
        is_new = watch_new and self.store.get_resource(source, rtype, rid) is None
        if not self.store.put_resource(source, resource, content_hash(resource)):
            result.unchanged += 1
            return
        result.stored += 1
        self.store.release_quarantine(source, rtype, rid)
        for rule in rules:
            if rule.rule.trigger == "new" and (initial or not is_new):
                if self.store.get_task(rule.task_id(source, resource)) is None:
                    continue  # only a resource first seen after the initial load opens one
            self._apply(rule, source, resource, now, lookup, result, focus_changed=True)
        patient = patient_reference(resource)
        if patient:
            for rule in self.rules.dependents(rtype):
                dependents[(rule.id, patient)] = rule

    def _apply(
        self,
        rule: CompiledRule,
        source: str,
        resource: dict[str, Any],
        now: datetime,
        lookup: StoreLookup,
        result: IngestResult,
        *,
        focus_changed: bool,
    ) -> None:
        if not focus_changed and rule.rule.trigger == "new":
            if self.store.get_task(rule.task_id(source, resource)) is None:
                return  # a re-evaluation never makes a resource "new"
        ev = rule.evaluate(resource, source, now, lookup)
        if ev.error:
            self._rule_failed(rule, resource, ev.error, result)
            return
        if ev.draft is not None:
            draft = ev.draft
            existing = self.store.get_task(draft.id)
            if existing is not None and not existing.is_active:
                if not (rule.rule.reopen_on_change and focus_changed):
                    return  # a closed task stays closed until its resource changes again
                self.tasks.reopen(existing.id, "the resource changed and needs attention again")
                result.tasks_reopened += 1
            elif existing is not None and not focus_changed:
                # Re-evaluation (a sweep, a related resource) must not move the due date of
                # `%now + 7 days` forward each time: it was set when the resource changed.
                draft = replace(draft, due=existing.due)
            outcome = self.store.upsert_task(draft, now)
            if outcome.created:
                result.tasks_created += 1
                result.tasks_by_rule[rule.id] = result.tasks_by_rule.get(rule.id, 0) + 1
            elif outcome.updated:
                result.tasks_updated += 1
        else:
            existing = self.store.get_task(rule.task_id(source, resource))
            if existing is None or not existing.is_active:
                return  # close cases are only worth evaluating for an active task
            case = rule.close_case(ev)
            if ev.error:
                self._rule_failed(rule, resource, ev.error, result)
            elif case is not None:
                self.tasks.auto_close(existing.id, case.status, case.reason)
                result.tasks_closed += 1

    @staticmethod
    def _rule_failed(
        rule: CompiledRule, resource: dict[str, Any], error: str, result: IngestResult
    ) -> None:
        result.rule_errors += 1
        log.warning(
            "rule_evaluation_failed",
            rule=rule.id,
            resource_type=resource.get("resourceType"),
            resource_id=resource.get("id"),
            step=error.split(":", 1)[0],  # never the message: it may quote resource values
        )

    def _quarantine(
        self,
        source: str,
        resource: Any,
        expected_type: str | None,
        issues: list[Any],
        now: datetime,
    ) -> None:
        body = resource if isinstance(resource, dict) else {"value": resource}
        rtype = body.get("resourceType") if isinstance(body.get("resourceType"), str) else None
        rid = body.get("id") if isinstance(body.get("id"), str) else None
        meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
        self.store.add_quarantine(
            QuarantineEntry(
                source=source,
                resource_type=rtype or expected_type or "(unknown)",
                resource_id=rid,
                version_id=meta.get("versionId")
                if isinstance(meta.get("versionId"), str)
                else None,
                issues=[dict(i) for i in issues],
                body=body,
                at=now,
            )
        )
        log.warning(
            "resource_quarantined",
            source=source,
            resource_type=rtype or expected_type,
            resource_id=rid,
            issues=len(issues),
            first_issue=issues[0]["expression"],
        )
