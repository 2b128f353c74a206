"""The storage protocol every engine implements (SQLite now, Redis next).

Each method is one atomic unit: an engine must never leave half of a method's effect behind.
`update_task` is the only read-modify-write: the engine reads the task, hands it to the
caller's `change` function (which applies the state machine) and writes the result, its
history event and its outbox entries together, or nothing. SQLite does this in one
transaction; Redis will do it with WATCH/MULTI. Nothing above `store/` sees a driver error:
engines translate them to `StoreError`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_bridge.patients.terms import patient_terms
from fhir_bridge.tasks.model import (
    OutboxEntry,
    OutboxStatus,
    Priority,
    Task,
    TaskChange,
    TaskDraft,
    TaskEvent,
    TaskStatus,
)


@dataclass(frozen=True)
class StoredResource:
    """The latest version of one resource from one source."""

    source: str
    resource_type: str
    id: str
    version_id: str | None
    last_updated: str | None
    content_hash: str
    body: dict[str, Any]


@dataclass(frozen=True)
class PatientReads:
    """The first reads of a patient's history, made together (`Store.patient_reads`).

    `identifiers` holds `patients_with_identifier` answers for the trusted identifiers the
    engine found on the Patient; a caller asks the store for any other it needs.
    """

    patient: StoredResource
    facts: dict[str, dict[str, Any]]  # `list_facts` of the kind asked for
    identifiers: dict[tuple[str, str], list[tuple[str, str]]]
    resources: list[StoredResource]  # `resources_for_patient` of the Patient
    tasks: list[Task]  # every task about `Patient/<id>`, of any source, in listing order


@dataclass(frozen=True)
class QuarantineEntry:
    """A resource that failed validation, with its OperationOutcome-shaped reasons."""

    source: str
    resource_type: str
    resource_id: str | None
    version_id: str | None
    issues: list[dict[str, Any]]
    body: Any
    at: datetime


@dataclass(frozen=True)
class TaskUpsert:
    """What `upsert_task` did: created a task, refreshed it, or found nothing to change."""

    task: Task
    created: bool
    updated: bool


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing: `total` counts every match, `more` says whether tasks
    follow this page."""

    items: list[Task]
    total: int
    more: bool = False


@dataclass(frozen=True)
class TaskCursor:
    """A place in the task listing order (priority, due, id): the next page starts after it.

    Keyset, not offset: tasks claimed or closed meanwhile neither skip nor repeat others.
    `encode` makes it an opaque URL-safe token; `decode` raises ValueError on anything else.
    """

    priority: Priority
    due: datetime | None
    id: str

    @classmethod
    def after(cls, task: Task) -> TaskCursor:
        """The place right after `task`."""
        return cls(task.priority, task.due, task.id)

    def encode(self) -> str:
        """An opaque token for clients."""
        due = self.due.astimezone(UTC).isoformat() if self.due else None
        raw = json.dumps([self.priority.value, due, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> TaskCursor:
        """The cursor a token stands for.

        :raises ValueError: the token was not made by `encode`.
        """
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            priority, due, task_id = json.loads(raw)
            if not isinstance(task_id, str) or not (due is None or isinstance(due, str)):
                raise ValueError("bad cursor fields")
            when = datetime.fromisoformat(due) if due else None
            if when is not None and when.tzinfo is None:
                raise ValueError("cursor due date without time zone")
            return cls(Priority(priority), when, task_id)
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise ValueError("not a task cursor from this API") from exc


@dataclass(frozen=True)
class TaskFilter:
    """What a task listing keeps; every given field must match (labels: the task has it).

    `due_after` is inclusive and `due_before` exclusive; either one leaves out tasks
    without a due date.
    """

    queue: str | None = None
    statuses: Sequence[TaskStatus] = ()
    rule_id: str | None = None
    kind: str | None = None
    assignee: str | None = None
    patient: str | None = None
    label: str | None = None
    due_after: datetime | None = None
    due_before: datetime | None = None

    def matches(self, task: Task) -> bool:
        """True when `task` passes every filter (engines may use this for what they do not
        index)."""
        checks = (
            self.queue is None or task.queue == self.queue,
            not self.statuses or task.status in self.statuses,
            self.rule_id is None or task.rule_id == self.rule_id,
            self.kind is None or task.kind == self.kind,
            self.assignee is None or task.assignee == self.assignee,
            self.patient is None or task.patient == self.patient,
            self.label is None or self.label in task.labels,
            self.due_after is None or (task.due is not None and task.due >= self.due_after),
            self.due_before is None or (task.due is not None and task.due < self.due_before),
        )
        return all(checks)


@dataclass(frozen=True)
class AuditRecord:
    """One read of patient data or change to a task, shaped like a FHIR AuditEvent.

    Holds references and ids only: never a name, a note or a resource body.
    """

    recorded: datetime
    subtype: str  # what was done: "patient-history", "task-claim", "task-status", ...
    action: str  # AuditEvent.action: C (create), R (read), U (update), D, E (execute)
    outcome: str  # AuditEvent.outcome: 0 success, 4 minor failure (4xx), 8 serious (5xx)
    agent: str  # who: the principal's subject or API key name
    roles: tuple[str, ...] = ()
    address: str | None = None  # where from: the client's network address
    patient: str | None = None  # Patient/<id>
    source: str | None = None  # the source the patient reference belongs to
    task_id: str | None = None
    status_code: int | None = None
    id: int | None = None  # given by the store

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON values (without its id)."""
        return {
            "recorded": self.recorded.astimezone(UTC).isoformat(),
            "subtype": self.subtype,
            "action": self.action,
            "outcome": self.outcome,
            "agent": self.agent,
            "roles": list(self.roles),
            "address": self.address,
            "patient": self.patient,
            "source": self.source,
            "task_id": self.task_id,
            "status_code": self.status_code,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], record_id: int) -> AuditRecord:
        """The record `to_json` wrote, with the id the store gave it."""
        return cls(
            recorded=datetime.fromisoformat(data["recorded"]),
            subtype=data["subtype"],
            action=data["action"],
            outcome=data["outcome"],
            agent=data["agent"],
            roles=tuple(data["roles"]),
            address=data["address"],
            patient=data["patient"],
            source=data["source"],
            task_id=data["task_id"],
            status_code=data["status_code"],
            id=record_id,
        )


@dataclass(frozen=True)
class AuditFilter:
    """Which audit records to list; every given part must match."""

    agent: str | None = None
    patient: str | None = None
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: AuditRecord) -> bool:
        """True when `record` passes every given part (`until` is exclusive)."""
        return (
            (self.agent is None or record.agent == self.agent)
            and (self.patient is None or record.patient == self.patient)
            and (self.task_id is None or record.task_id == self.task_id)
            and (self.since is None or record.recorded >= self.since)
            and (self.until is None or record.recorded < self.until)
        )


@dataclass(frozen=True)
class DueCounts:
    """Active tasks of one queue by deadline: past due, and still due before the day ends."""

    overdue: int = 0
    due_today: int = 0


@dataclass(frozen=True)
class OutboxClaim:
    """An outbox entry handed to one consumer to deliver; `receipt` is the engine's handle for
    `ack_outbox` (the Redis stream message id; None where nothing needs acknowledging)."""

    entry: OutboxEntry
    receipt: str | None = None


class Store(abc.ABC):
    """Resources, cursors, quarantine, tasks with history, and the outbox."""

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    @abc.abstractmethod
    def batch(self) -> AbstractContextManager[None]:
        """Group the writes inside for speed (one transaction or pipeline).

        Each method stays atomic on its own; a batch that fails part-way may keep the
        methods that completed before the failure.
        """

    # -- resources -------------------------------------------------------------------------
    @abc.abstractmethod
    def put_resource(self, source: str, resource: dict[str, Any], content_hash: str) -> bool:
        """Store the latest version of a resource.

        :returns: False when the stored content hash is the same (nothing written).
        """

    def put_resources(
        self,
        source: str,
        items: Sequence[tuple[dict[str, Any], str]],
        *,
        unmapped: bool = False,
    ) -> list[bool]:
        """`put_resource` for each (resource, content hash) in order, as one batch of writes.

        :param unmapped: the caller runs the resources' rules next and calls `mark_mapped`
            after (ingest); engines that need it keep a mark until then (see there).
        :returns: for each item, whether it was written (False: same hash as stored, or as
            an earlier item of the batch with the same type and id; a resource still marked
            unmapped is written again).
        """
        return [self.put_resource(source, resource, digest) for resource, digest in items]

    def mark_mapped(self, source: str, keys: Sequence[tuple[str, str]]) -> None:
        """The rules of these (type, id) resources, just written by `put_resources(...,
        unmapped=True)`, have run and their tasks are written.

        An engine whose `batch` is one transaction needs nothing here (this default): a
        crash rolls the resources back with their tasks. One that writes a page's resources
        and its tasks separately (Redis) marks resources as not yet mapped when it writes
        them and clears the mark here, so a resource stored by a process killed before its
        tasks were written counts as changed, not as unchanged, when it comes again (the
        cursor did not move past its page): its rules run then, and one that was new then
        is still new (`resource_hashes` leaves it out: `trigger: new` rules fire).
        """
        return None

    @abc.abstractmethod
    def get_resource(
        self, source: str, resource_type: str, resource_id: str
    ) -> StoredResource | None:
        """The stored latest version, or None."""

    def resource_hashes(
        self, source: str, resource_type: str, resource_ids: Sequence[str]
    ) -> dict[str, str]:
        """The content hashes of those of `resource_ids` that are stored, by id (not one
        whose first ingest was cut off before `mark_mapped`: it is still new).

        Batched reads for a page of ingest; engines answer in one round trip where they can
        (this default asks `get_resource` for each).
        """
        found = {}
        for rid in resource_ids:
            stored = self.get_resource(source, resource_type, rid)
            if stored is not None:
                found[rid] = stored.content_hash
        return found

    def get_resources(self, keys: Sequence[tuple[str, str, str]]) -> list[StoredResource | None]:
        """Several resources by (source, type, id), in order (None: not stored); engines may
        read them in one go (Redis: one pipelined round trip)."""
        return [self.get_resource(*key) for key in keys]

    @abc.abstractmethod
    def delete_resource(self, source: str, resource_type: str, resource_id: str) -> bool:
        """Forget a resource that was deleted on its server (the caller closes its tasks).

        :returns: False when it was not stored.
        """

    @abc.abstractmethod
    def resources_for_patient(
        self, source: str, patient: str, resource_type: str | None = None
    ) -> list[StoredResource]:
        """The stored resources of one source about `patient` (`Patient/<id>`), by type and id.

        The engine derives each resource's patient with `patients.refs.patient_reference`.
        """

    @abc.abstractmethod
    def iter_resources(
        self, resource_type: str, source: str | None = None
    ) -> Iterator[StoredResource]:
        """Every stored resource of a type (all sources, or one), in pages."""

    @abc.abstractmethod
    def resource_counts(self, source: str | None = None) -> dict[str, int]:
        """Number of stored resources per type (all sources, or one)."""

    # -- cursors ---------------------------------------------------------------------------
    @abc.abstractmethod
    def get_cursor(self, source: str, resource_type: str) -> str | None:
        """The `_lastUpdated` high-water mark of the last stored page, or None."""

    @abc.abstractmethod
    def set_cursor(self, source: str, resource_type: str, value: str | None) -> None:
        """Move the cursor (None forgets it, for a full re-pull)."""

    # -- quarantine ------------------------------------------------------------------------
    @abc.abstractmethod
    def add_quarantine(self, entry: QuarantineEntry) -> None:
        """Keep a failed resource with its reasons (the latest failure per resource wins)."""

    @abc.abstractmethod
    def list_quarantine(
        self, source: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[QuarantineEntry], int]:
        """Quarantined resources, newest first, with the total count."""

    @abc.abstractmethod
    def release_quarantine(self, source: str, resource_type: str, resource_id: str) -> None:
        """Forget a quarantine entry (the resource now validates)."""

    def release_quarantines(self, source: str, keys: Sequence[tuple[str, str]]) -> None:
        """`release_quarantine` for each (type, id), as one batch of writes."""
        for resource_type, resource_id in keys:
            self.release_quarantine(source, resource_type, resource_id)

    # -- tasks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_task(self, draft: TaskDraft, now: datetime) -> TaskUpsert:
        """Create the task for `draft`'s identity, or refresh it; never a duplicate."""

    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

    def upsert_tasks(self, drafts: Sequence[TaskDraft], now: datetime) -> list[TaskUpsert]:
        """`upsert_task` for each draft in order, as one batch of writes (engines write new
        tasks together where they can; this default upserts one at a time)."""
        return [self.upsert_task(draft, now) for draft in drafts]

    def rules_with_tasks(
        self,
        source: str,
        focus_type: str,
        rule_ids: Sequence[str],
        focus_ids: Sequence[str] | None = None,
    ) -> set[str]:
        """Those of `rule_ids` with any task on a `focus_type` resource of `source` (one of
        `focus_ids`, when given).

        Ingest skips looking for tasks of the other rules on a page's resources (a first load
        has none). An engine may answer more rules than that (all of them, by default: it only
        costs ingest that shortcut), never fewer; one shared by several writers must not
        answer from a stale view.
        """
        return set(rule_ids)

    def get_tasks(self, task_ids: Sequence[str]) -> dict[str, Task]:
        """Those of `task_ids` that exist, by id (ingest asks for a page's worth at once;
        this default asks `get_task` for each)."""
        found = {}
        for task_id in dict.fromkeys(task_ids):
            task = self.get_task(task_id)
            if task is not None:
                found[task_id] = task
        return found

    def list_tasks(
        self,
        *,
        queue: str | None = None,
        statuses: Sequence[TaskStatus] = (),
        rule_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        kind: str | None = None,
        assignee: str | None = None,
        patient: str | None = None,
        label: str | None = None,
        due_after: datetime | None = None,
        due_before: datetime | None = None,
        after: TaskCursor | None = None,
    ) -> TaskPage:
        """Tasks ordered by priority (highest first), then due date (none last), then id.

        The filters combine as in `TaskFilter`. `after` starts the page right after a place
        in that order (keyset paging; `offset` then skips from there); `total` always counts
        every match, whatever the cursor.
        """
        filters = TaskFilter(
            queue=queue,
            statuses=tuple(statuses),
            rule_id=rule_id,
            kind=kind,
            assignee=assignee,
            patient=patient,
            label=label,
            due_after=due_after,
            due_before=due_before,
        )
        return self._list_tasks(filters, limit, offset, after)

    @abc.abstractmethod
    def _list_tasks(
        self, f: TaskFilter, limit: int, offset: int, after: TaskCursor | None
    ) -> TaskPage:
        """`list_tasks` for the engine, with the filters gathered in one value."""

    @abc.abstractmethod
    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Per queue, the number of tasks in each status."""

    def due_counts(self, now: datetime, day_end: datetime) -> dict[str, DueCounts]:
        """Per queue with active tasks (open, in progress): how many are overdue (due before
        `now`) and how many are due today (from `now` up to, not including, `day_end`)."""
        counts: dict[str, list[int]] = {}
        active = [TaskStatus.OPEN, TaskStatus.IN_PROGRESS]
        for task in self.iter_tasks(statuses=active):
            cell = counts.setdefault(task.queue, [0, 0])
            if task.due is not None and task.due < now:
                cell[0] += 1
            elif task.due is not None and task.due < day_end:
                cell[1] += 1
        return {q: DueCounts(overdue=o, due_today=t) for q, (o, t) in counts.items()}

    @abc.abstractmethod
    def update_task(self, task_id: str, change: Callable[[Task], TaskChange]) -> Task:
        """Atomically apply `change` to the current task; store task, event and outbox entries.

        :raises TaskNotFound: no such task.
        Exceptions raised by `change` propagate and nothing is written.
        """

    @abc.abstractmethod
    def set_task_mirror(self, task_id: str, mirror_id: str, mirror_version: str | None) -> None:
        """Remember the id and version of the task's FHIR Task mirror in the source."""

    @abc.abstractmethod
    def task_history(self, task_id: str) -> list[TaskEvent]:
        """A task's events, oldest first."""

    def task_histories(self, task_ids: Sequence[str]) -> dict[str, list[TaskEvent]]:
        """Several tasks' events, oldest first, by task id (an id without events maps to []).

        For readers of many tasks at once (the outcome figures): engines read them in a few
        batches instead of one call per task.
        """
        return {task_id: self.task_history(task_id) for task_id in task_ids}

    # -- outbox ----------------------------------------------------------------------------
    @abc.abstractmethod
    def due_outbox(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Pending entries due for delivery: only the oldest pending entry of each task,
        so writes about the same task are delivered in order."""

    @abc.abstractmethod
    def outbox_delivered(self, entry_id: int, now: datetime) -> None:
        """Mark an entry delivered."""

    @abc.abstractmethod
    def outbox_retry(self, entry_id: int, error: str, next_attempt_at: datetime) -> None:
        """Record a failed attempt and when to try again."""

    @abc.abstractmethod
    def outbox_dead(self, entry_id: int, error: str) -> None:
        """Give up on an entry (kept, with the reason, for an operator)."""

    @abc.abstractmethod
    def list_outbox(
        self, status: OutboxStatus | None = None, task_id: str | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        """Outbox entries, oldest first."""

    @abc.abstractmethod
    def get_outbox(self, entry_id: int) -> OutboxEntry | None:
        """One outbox entry (with its `detail`), or None."""

    @abc.abstractmethod
    def outbox_park(
        self, entry_id: int, status: OutboxStatus, error: str, detail: dict[str, Any]
    ) -> None:
        """Count an attempt and take an entry out of delivery as DEAD or CONFLICT, keeping
        `detail` (an OperationOutcome, a diff) for the operator and the coordinator.

        :raises ValueError: `status` is not DEAD or CONFLICT.
        """

    @abc.abstractmethod
    def outbox_requeue(self, entry_id: int, now: datetime) -> bool:
        """Put a DEAD or CONFLICT entry back to pending, due at `now`, with a fresh retry
        budget (attempts 0); it keeps its place among its task's pending entries (by id).

        :returns: False when there is no such entry or it is not DEAD or CONFLICT.
        """

    @abc.abstractmethod
    def outbox_discard(self, entry_id: int, reason: str) -> bool:
        """Give up on an entry that is not delivered (status DISCARDED, `reason` as its error).

        :returns: False when there is no such entry or it is delivered or already discarded.
        """

    # Claims: how consumers share delivery. The default is one process's view (SQLite): the due
    # entries themselves, nothing to acknowledge, nothing reclaimed.
    outbox_visibility_timeout: float | None = None  # seconds before an unacked claim moves on

    def claim_outbox(self, consumer: str, now: datetime, limit: int = 100) -> list[OutboxClaim]:
        """Entries for `consumer` to deliver now: due heads of their tasks, at most `limit`.

        An engine shared by several processes (Redis) hands each entry to one consumer at a
        time and gives a claim that is not acknowledged within `outbox_visibility_timeout` to
        another consumer; a task's next entry is handed out only after its head left pending.
        """
        return [OutboxClaim(e) for e in self.due_outbox(now, limit)]

    def ack_outbox(self, claim: OutboxClaim) -> None:
        """Say the claim's outcome is recorded (delivered, retried, parked), so it is not
        handed out again (called after `outbox_delivered`/`outbox_retry`/`outbox_park`)."""
        return None  # one process: nothing is handed out twice

    def touch_outbox(self, consumer: str, claims: Sequence[OutboxClaim]) -> int:
        """Keep claims that are still being delivered from being reclaimed by others.

        :returns: how many of `claims` are still this consumer's.
        """
        return len(claims)

    def outbox_consumer_done(self, consumer: str) -> None:
        """Forget a consumer that stops (engines keep the claims it did not acknowledge)."""
        return None  # one process: no consumers to forget

    # -- audit trail -------------------------------------------------------------------------
    @abc.abstractmethod
    def add_audit(self, record: AuditRecord) -> int:
        """Append an audit record (never changed afterwards); its id, increasing."""

    @abc.abstractmethod
    def list_audit(
        self, filters: AuditFilter | None = None, limit: int = 100, cursor: int | None = None
    ) -> tuple[list[AuditRecord], int | None]:
        """Matching records newest first, only those with an id below `cursor` when given;
        with the cursor of the next page (None on the last page)."""

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        """Every task matching `filters` (as `list_tasks`), page by page."""
        offset = 0
        while True:
            page = self.list_tasks(**filters, limit=500, offset=offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    # -- bulk reads (for `store/migrate.py`); engines may override with faster ones ----------
    def iter_cursors(self) -> Iterator[tuple[str, str, str]]:
        """Every cursor as (source, resource type, value), by source and type."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its cursors")

    def iter_quarantine(self) -> Iterator[QuarantineEntry]:
        """Every quarantine entry, newest first, page by page."""
        offset = 0
        while True:
            entries, total = self.list_quarantine(limit=500, offset=offset)
            yield from entries
            offset += len(entries)
            if not entries or offset >= total:
                return

    def iter_outbox(self) -> Iterator[OutboxEntry]:
        """Every outbox entry (any status, with its `detail`), oldest first."""
        yield from self.list_outbox(limit=-1)

    def is_empty(self) -> bool:
        """True when the store holds no resource, cursor, quarantine entry, task, outbox entry,
        audit record or fact."""
        return (
            not self.resource_counts()
            and next(self.iter_cursors(), None) is None
            and self.list_quarantine(limit=0)[1] == 0
            and self.list_tasks(limit=0).total == 0
            and not self.list_outbox(limit=1)
            and not self.list_audit(limit=1)[0]
            and next(self.iter_facts(), None) is None
        )

    # -- fenced writes (for leased work, see `store/leases.py`) --------------------------------
    def set_cursor_fenced(
        self, source: str, resource_type: str, value: str | None, lease: Lease
    ) -> bool:
        """Move the cursor as `set_cursor` does, only while `lease`'s token is not stale.

        The engine remembers the highest token it accepted for the lease's name and refuses
        a lower one; engines that can see the lease itself (Redis) also refuse when it is no
        longer held with this token.

        :returns: False (and nothing written) when the write was refused.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot fence cursor writes")

    # -- patient identity ----------------------------------------------------------------------
    def patient_reads(
        self, source: str, patient_id: str, fact_kind: str, trusted: Sequence[str]
    ) -> PatientReads | None:
        """The Patient record, the facts of `fact_kind`, the records sharing its identifiers
        of the `trusted` systems, its resources and its tasks, in one read; None when the
        engine has no cheaper way than the single reads (the default: SQLite reads are local
        calls), or when the Patient is not stored. Redis answers with one script."""
        return None

    def patients_with_term(self, term: str, prefix: bool) -> set[tuple[str, str]]:
        """(source, id) of every stored Patient with search term `term` (`patients.terms`), or
        with a term starting with it when `prefix`.

        This default reads every Patient; engines keep an index (patient search asks this
        for each part of a query).
        """
        found = set()
        for stored in self.iter_resources("Patient"):
            terms = patient_terms(stored.body)
            if any(t.startswith(term) if prefix else t == term for t in terms):
                found.add((stored.source, stored.id))
        return found

    def patients_with_identifier(self, system: str, value: str) -> list[tuple[str, str]]:
        """(source, id) of every stored Patient carrying identifier `system|value`, sorted.

        This default reads every Patient; engines keep an index (cross-source linking asks
        this for each record of a patient on every history read).
        """
        found = set()
        for stored in self.iter_resources("Patient"):
            for ident in stored.body.get("identifier") or []:
                if (ident or {}).get("system") == system and (ident or {}).get("value") == value:
                    found.add((stored.source, stored.id))
        return sorted(found)

    # -- facts: small records people set by hand (patient links, contact authorizations) -----
    @abc.abstractmethod
    def put_fact(self, kind: str, key: str, value: dict[str, Any] | None) -> bool:
        """Set (or with None, remove) the JSON record `key` of `kind`; True when it changed.

        For decisions a person makes that no FHIR server holds (an admin linking two patient
        records, a coordinator noting a family contact may be told): few, small, durable.
        """

    @abc.abstractmethod
    def get_fact(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record `key` of `kind`, or None."""

    @abc.abstractmethod
    def list_facts(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of `kind`, by key."""

    @abc.abstractmethod
    def iter_facts(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every fact of every kind as (kind, key, value), by kind then key (for migrate)."""


@dataclass(frozen=True)
class Lease:
    """A granted lease on a piece of work: its name, the fencing token and who holds it."""

    name: str
    token: int
    owner: str

    @property
    def value(self) -> str:
        """What the lease record holds while this grant is current."""
        return f"{self.token}:{self.owner}"
