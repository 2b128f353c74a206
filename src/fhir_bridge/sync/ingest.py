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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fhir_bridge.logging import get_logger
from fhir_bridge.mapping.engine import CompiledRule, RuleSet
from fhir_bridge.patients.refs import patient_reference
from fhir_bridge.store.base import QuarantineEntry, Store, TaskUpsert
from fhir_bridge.tasks.model import Task, TaskDraft
from fhir_bridge.tasks.service import TaskService
from fhir_bridge.validate.canonical import canonical_json as canonical_json  # re-exported
from fhir_bridge.validate.canonical import content_hash as content_hash
from fhir_bridge.validate.parse import Issue
from fhir_bridge.validate.pool import Checked, Findings, ParsePool, PendingCheck, findings
from fhir_bridge.validate.profiles import ProfileSet

log = get_logger("ingest")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


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
    """`mapping.Lookup` over the store: a patient's resources from one source.

    Kept for one page: rules of many resources ask for the same patient's resources (every
    family rule of every Appointment reads the Patient, RelatedPersons and Consents), so each
    (type, patient) is read once, until the page stores a resource of that type.
    """

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self._cache: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def for_patient(self, resource_type: str, patient: str) -> list[dict[str, Any]]:
        """The patient's stored resources of `resource_type`."""
        by_patient = self._cache.setdefault(resource_type, {})
        found = by_patient.get(patient)
        if found is None:
            found = by_patient[patient] = [
                r.body
                for r in self.store.resources_for_patient(self.source, patient, resource_type)
            ]
        return found

    def forget(self, resource_type: str) -> None:
        """A resource of `resource_type` was stored: read that type again when asked (every
        patient's: the resource may have moved from another patient)."""
        self._cache.pop(resource_type, None)


class _PageTasks:
    """The tasks one page asks about, read before its rules run.

    On a first load nearly every evaluation asks for a task that does not exist. So the store
    is asked once which rules have any task on the page's resources (none, on a first load,
    even after earlier pages made tasks on theirs: then no id is even computed), and, for the
    rules that do, which of the page's task ids exist. A task found is read again when asked
    for, so a coordinator's change made meanwhile is seen as before. New tasks are written
    together when the page ends (or before one of them is read again); refreshes and closes
    are written as they happen.
    """

    def __init__(self, store: Store, now: datetime) -> None:
        self.store = store
        self.now = now
        self._pending: dict[str, TaskDraft] = {}  # new tasks, written together (`flush`)
        self._outcomes: list[TaskUpsert] = []  # of the pending tasks written so far
        self._absent: set[str] = set()  # task ids known not to exist
        self._ids: dict[tuple[str, str], str] = {}  # (rule id, resource id) -> task id
        # Rules without a task on the page's resources before it: of those, only the tasks
        # the page makes exist (other resources of the type, a dependent's, may have some).
        self._taskless: dict[str, set[str]] = {}  # rule id -> focus ids of the page's tasks
        self._page_ids: dict[str, set[str]] = {}  # resource type -> ids of the page's

    def task_id(self, rule: CompiledRule, source: str, resource: dict[str, Any]) -> str:
        """`rule.task_id`, computed once per page (a hash)."""
        key = (rule.id, str(resource.get("id")))
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = rule.task_id(source, resource)
        return found

    def prefetch(
        self, source: str, resource_type: str, rules: list[CompiledRule], page: list[Any]
    ) -> None:
        """Learn which tasks of `rules` on the page's resources of `resource_type` exist."""
        focus_ids = [str(resource.get("id")) for resource in page]
        self._page_ids.setdefault(resource_type, set()).update(focus_ids)
        with_tasks = self.store.rules_with_tasks(
            source, resource_type, [r.id for r in rules], focus_ids
        )
        for rule in rules:
            if rule.id not in with_tasks:
                self._taskless.setdefault(rule.id, set())
        ids = [
            self.task_id(rule, source, resource)
            for rule in rules
            if rule.id in with_tasks
            for resource in page
        ]
        found = self.store.get_tasks(ids)
        self._absent.update(i for i in ids if i not in found)

    def get(self, rule: CompiledRule, source: str, resource: dict[str, Any]) -> Task | None:
        """The task of `rule` for `resource`, or None (without a store read when the page
        knows there is none)."""
        created = self._taskless.get(rule.id)
        if created is not None:
            rid = str(resource.get("id"))
            if rid in self._page_ids[rule.resource_type] and rid not in created:
                return None
        task_id = self.task_id(rule, source, resource)
        if task_id in self._pending:
            self.flush()
        elif task_id in self._absent:
            return None
        return self.store.get_task(task_id)

    def create(self, rule: CompiledRule, draft: TaskDraft) -> None:
        """Create the task of `draft`, which `get` just found absent, with the page's others:
        a first load's tasks go to the store in one batch (`settle`, when the page ends; `get`
        of a pending task writes the batch first)."""
        self._pending[draft.id] = draft
        self.upserted(rule, draft)

    def flush(self) -> None:
        """Write the pending new tasks."""
        if self._pending:
            drafts = list(self._pending.values())
            self._pending.clear()
            self._outcomes.extend(self.store.upsert_tasks(drafts, self.now))

    def settle(self, result: IngestResult) -> None:
        """Write the pending new tasks and count what the writes did."""
        self.flush()
        for outcome in self._outcomes:
            if outcome.created:
                result.tasks_created += 1
                rule_id = outcome.task.rule_id
                result.tasks_by_rule[rule_id] = result.tasks_by_rule.get(rule_id, 0) + 1
            elif outcome.updated:
                result.tasks_updated += 1
        self._outcomes.clear()

    def upserted(self, rule: CompiledRule, draft: TaskDraft) -> None:
        """The page created or refreshed the task of `draft`."""
        self._absent.discard(draft.id)
        created = self._taskless.get(rule.id)
        if created is not None:
            created.add(draft.focus_id)


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
    :param pool: worker processes for the parse and profile checks of big pages (built with
        the same `profile_set`); None checks every page in this process.
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
        pool: ParsePool | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.tasks = tasks
        self.clock = clock
        self.profile_set = profile_set
        self.policies = dict(policies or {})
        self.pool = pool

    def check(self, source: str, resource: Any, expected_type: str | None) -> list[Issue]:
        """The issues that keep `resource` out of the store (errors first); empty: store it.

        Structure (R4B parse) always quarantines; core required bindings and the source's
        profiles quarantine unless the source is set to warn.
        """
        profiles = self.policies.get(source, _DEFAULT_POLICY).profiles
        found = findings(resource, expected_type, self.profile_set, profiles)
        return self._verdict(source, resource, found)

    def precheck(
        self, source: str, resources: list[Any], expected_type: str | None, job_size: int = 0
    ) -> PendingCheck | None:
        """Start the parse and profile checks of a page in the pool, to be handed to `ingest`
        (`prechecked`) later; None when the page will be checked in-process.

        :param job_size: resources in the whole job (a search's total): a big job uses the
            pool for pages of any size.
        """
        if self.pool is None:
            return None
        profiles = self.policies.get(source, _DEFAULT_POLICY).profiles
        return self.pool.submit(resources, expected_type, profiles, job_size)

    def close(self) -> None:
        """Stop the parse pool's workers, if any (the store is the caller's)."""
        if self.pool is not None:
            self.pool.close()

    def _verdict(self, source: str, resource: Any, found: Findings) -> list[Issue]:
        """`check`'s answer from the findings (computed here or by the pool)."""
        if found is None:
            return []
        structural, checked = found
        if structural:
            return structural
        policy = self.policies.get(source, _DEFAULT_POLICY)
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
        prechecked: PendingCheck | None = None,
        job_size: int = 0,
    ) -> IngestResult:
        """Take a page of resources from `source`; never raises for a bad resource.

        :param initial: the source's first load of this type: rules with `trigger: new`
            do not fire for what is merely being loaded for the first time.
        :param prechecked: `precheck` of this same page, started earlier; without it a page
            of a big enough job is checked by the pool now.
        :param job_size: resources in the whole job (see `precheck`).
        """
        result = IngestResult()
        now = self.clock()
        page = resources if isinstance(resources, list) else list(resources)
        if prechecked is None:
            prechecked = self.precheck(source, page, expected_type, job_size)
        found: list[Checked] | None = prechecked.results() if prechecked is not None else None
        if found is not None and len(found) != len(page):
            found = None  # not this page's: check it here
        if found is None:  # checked here, before the store's batch (its lock) is taken
            profiles = self.policies.get(source, _DEFAULT_POLICY).profiles
            found = [
                (findings(resource, expected_type, self.profile_set, profiles), None)
                for resource in page
            ]
        lookup = StoreLookup(self.store, source)
        tasks = _PageTasks(self.store, now)
        # (rule id, patient) pairs whose `related` resources changed in this page; evaluated
        # once each after the page, however many of the patient's resources arrived.
        dependents: dict[tuple[str, str], CompiledRule] = {}
        with self.store.batch():
            self._prefetch(source, page, tasks)
            known = None if initial else self._known(source, page)
            admitted: list[tuple[int, dict[str, Any]]] = []
            hashes: list[str] = []
            quarantined: dict[tuple[str, str], int] = {}  # (type, id) -> its last position
            for position, resource in enumerate(page):
                result.received += 1
                verdict, known_hash = found[position]
                if self._admit(source, resource, expected_type, now, result, verdict):
                    admitted.append((position, resource))
                    # (the pool's hash, or now, while the resource is in cache)
                    hashes.append(known_hash or content_hash(resource))
                elif isinstance(resource, dict):
                    quarantined[(str(resource.get("resourceType")), str(resource.get("id")))] = (
                        position
                    )
            # One batch of writes for the page's resources, then their rules: a rule that
            # reads other resources sees the whole page stored (and `dependents` below
            # re-evaluates the rules that read this page's types, as before).
            written = self.store.put_resources(
                source, [(r, h) for (_, r), h in zip(admitted, hashes, strict=True)], unmapped=True
            )
            stored = [(p, r) for (p, r), w in zip(admitted, written, strict=True) if w]
            result.stored += len(stored)
            result.unchanged += len(admitted) - len(stored)
            self.store.release_quarantines(
                source,
                [  # not one the page quarantined again after this valid copy
                    key
                    for position, r in stored
                    if quarantined.get(key := (r["resourceType"], r["id"]), -1) < position
                ],
            )
            for rtype in {r["resourceType"] for _, r in stored}:
                lookup.forget(rtype)
            for _, resource in stored:
                self._map(source, resource, now, lookup, known, tasks, result, dependents)
            for (_, patient), rule in dependents.items():
                # Through the page's lookup: rules of one type share the patient's read.
                for other in lookup.for_patient(rule.resource_type, patient):
                    self._apply(
                        rule, source, other, now, lookup, tasks, result, focus_changed=False
                    )
            tasks.settle(result)
            # Only now is the page's mapping complete (see Store.mark_mapped).
            self.store.mark_mapped(source, [(r["resourceType"], r["id"]) for _, r in stored])
        return result

    def _prefetch(self, source: str, page: list[Any], tasks: _PageTasks) -> None:
        """Read, per type, which tasks the rules of the page's resources already have."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in page:
            if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                rtype = resource.get("resourceType")
                if isinstance(rtype, str) and self.rules.for_type(rtype):
                    by_type.setdefault(rtype, []).append(resource)
        for rtype, resources in by_type.items():
            tasks.prefetch(source, rtype, self.rules.for_type(rtype), resources)

    def _known(self, source: str, page: list[Any]) -> set[tuple[str, str]] | None:
        """(type, id) of the page's resources already stored, where a `trigger: new` rule
        needs to know; None when no rule of the page's types asks."""
        wanted: dict[str, list[str]] = {}
        for resource in page:
            if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                rtype = resource.get("resourceType")
                if isinstance(rtype, str) and self._watch_new(rtype):
                    wanted.setdefault(rtype, []).append(resource["id"])
        if not wanted:
            return None
        return {
            (rtype, rid)
            for rtype, ids in wanted.items()
            for rid in self.store.resource_hashes(source, rtype, ids)
        }

    def _watch_new(self, rtype: str) -> bool:
        return any(r.rule.trigger == "new" for r in self.rules.for_type(rtype))

    def reevaluate(self, source: str | None = None) -> IngestResult:
        """Run every rule again over every stored resource (time moves conditions on:
        a no-show leaves its lookback window, a booked visit comes within 7 days)."""
        result = IngestResult()
        now = self.clock()
        for rtype in sorted(self.rules.resource_types):
            for stored in self.store.iter_resources(rtype, source):
                lookup = StoreLookup(self.store, stored.source)
                tasks = _PageTasks(self.store, now)  # no prefetch: every read goes to the store
                for rule in self.rules.for_type(rtype):
                    self._apply(
                        rule,
                        stored.source,
                        stored.body,
                        now,
                        lookup,
                        tasks,
                        result,
                        focus_changed=False,
                    )
                tasks.settle(result)
        return result

    def reevaluate_patient(self, source: str, patient: str) -> IngestResult:
        """Run every rule again over one patient's resources of `source`, at once: for a
        decision no FHIR resource carries that rules read (a coordinator's family-sharing
        flag), instead of waiting for the next sweep."""
        result = IngestResult()
        now = self.clock()
        lookup = StoreLookup(self.store, source)
        tasks = _PageTasks(self.store, now)  # no prefetch: every read goes to the store
        for rtype in sorted(self.rules.resource_types):
            for resource in lookup.for_patient(rtype, patient):
                for rule in self.rules.for_type(rtype):
                    self._apply(
                        rule, source, resource, now, lookup, tasks, result, focus_changed=False
                    )
        tasks.settle(result)
        return result

    def _admit(
        self,
        source: str,
        resource: Any,
        expected_type: str | None,
        now: datetime,
        result: IngestResult,
        found: Findings,
    ) -> bool:
        """True when `resource` may be stored; else it is quarantined with its issues."""
        issues = self._verdict(source, resource, found)
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
            return False
        return True

    def _map(
        self,
        source: str,
        resource: dict[str, Any],
        now: datetime,
        lookup: StoreLookup,
        known: set[tuple[str, str]] | None,
        tasks: _PageTasks,
        result: IngestResult,
        dependents: dict[tuple[str, str], CompiledRule],
    ) -> None:
        """Run the rules of a resource just stored (new, or its content changed).

        :param known: the page's resources stored before the page (None: the initial load,
            or no `trigger: new` rule of the type); a resource first seen is added.
        """
        rtype, rid = resource["resourceType"], resource["id"]
        is_new = known is not None and (rtype, rid) not in known
        if known is not None:
            known.add((rtype, rid))
        for rule in self.rules.for_type(rtype):
            if rule.rule.trigger == "new" and (known is None or not is_new):
                if tasks.get(rule, source, resource) is None:
                    continue  # only a resource first seen after the initial load opens one
            self._apply(rule, source, resource, now, lookup, tasks, result, focus_changed=True)
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
        tasks: _PageTasks,
        result: IngestResult,
        *,
        focus_changed: bool,
    ) -> None:
        if not focus_changed and rule.rule.trigger == "new":
            if tasks.get(rule, source, resource) is None:
                return  # a re-evaluation never makes a resource "new"
        if rule.guard.fails(resource) is not None:
            # `when` cannot hold (the guard reads a value it does not allow): only an active
            # task could need closing, and most resources have none.
            if tasks.get(rule, source, resource) is None:
                return
        ev = rule.evaluate(resource, source, now, lookup)
        if ev.error:
            self._rule_failed(rule, resource, ev.error, result)
            return
        if ev.draft is not None:
            draft = ev.draft
            existing = tasks.get(rule, source, resource)
            if existing is not None and not existing.is_active:
                if not (rule.rule.reopen_on_change and focus_changed):
                    return  # a closed task stays closed until its resource changes again
                self.tasks.reopen(existing.id, "the resource changed and needs attention again")
                result.tasks_reopened += 1
            elif existing is not None and not focus_changed:
                # Re-evaluation (a sweep, a related resource) must not move the due date of
                # `%now + 7 days` forward each time: it was set when the resource changed.
                draft = replace(draft, due=existing.due)
            if existing is None:
                tasks.create(rule, draft)  # counted when written (`settle`)
                return
            outcome = self.store.upsert_task(draft, now)
            tasks.upserted(rule, draft)
            if outcome.created:
                result.tasks_created += 1
                result.tasks_by_rule[rule.id] = result.tasks_by_rule.get(rule.id, 0) + 1
            elif outcome.updated:
                result.tasks_updated += 1
        else:
            existing = tasks.get(rule, source, resource)
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
