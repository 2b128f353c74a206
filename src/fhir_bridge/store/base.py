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

    @abc.abstractmethod
    def get_resource(
        self, source: str, resource_type: str, resource_id: str
    ) -> StoredResource | None:
        """The stored latest version, or None."""

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

    # -- tasks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_task(self, draft: TaskDraft, now: datetime) -> TaskUpsert:
        """Create the task for `draft`'s identity, or refresh it; never a duplicate."""

    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

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
        """True when the store holds no resource, cursor, quarantine entry, task or outbox entry."""
        return (
            not self.resource_counts()
            and next(self.iter_cursors(), None) is None
            and self.list_quarantine(limit=0)[1] == 0
            and self.list_tasks(limit=0).total == 0
            and not self.list_outbox(limit=1)
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
