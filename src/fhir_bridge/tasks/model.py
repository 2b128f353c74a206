"""Coordinator tasks: identity, states and the transitions a coordinator may make.

A task's identity is (rule id, source, focus type/id): the same resource seen again, or a new
version of it, lands on the same task. `task_id()` derives a stable id from that identity so
every engine and every worker computes the same id without asking anyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from fhir_bridge.errors import IllegalTransition


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    OPEN = "open"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Priority(StrEnum):
    """FHIR Task.priority codes, lowest to highest."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"


# Completed and cancelled are final for a coordinator; a new finding makes a new decision
# in the mapping rules, not a silent reopen.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.OPEN: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.CANCELLED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.OPEN, TaskStatus.COMPLETED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def allowed_transitions(status: TaskStatus) -> list[str]:
    """The statuses a task in `status` may move to, sorted for stable messages."""
    return sorted(s.value for s in TRANSITIONS[status])


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if target not in TRANSITIONS[current]:
        allowed = allowed_transitions(current)
        raise IllegalTransition(
            f"a task that is {current.value} cannot become {target.value}; "
            f"allowed: {', '.join(allowed) or 'none (final status)'}",
            current=current.value,
            allowed=allowed,
        )


def identity_key(rule_id: str, source: str, focus_type: str, focus_id: str) -> str:
    """The natural key of a task, readable by a human."""
    return f"{rule_id}|{source}|{focus_type}/{focus_id}"


def task_id(rule_id: str, source: str, focus_type: str, focus_id: str) -> str:
    """A stable 20-hex-digit id derived from the task identity."""
    key = identity_key(rule_id, source, focus_type, focus_id)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TaskDraft:
    """What a mapping rule asks for: a task for one resource, before it is stored."""

    rule_id: str
    source: str
    focus_type: str
    focus_id: str
    focus_version: str | None
    patient: str | None
    queue: str
    kind: str
    title: str
    priority: Priority = Priority.ROUTINE
    due: datetime | None = None
    description: str | None = None
    labels: tuple[str, ...] = ()
    assignee: str | None = None

    @property
    def id(self) -> str:
        """The id the task has (or will have) in every engine."""
        return task_id(self.rule_id, self.source, self.focus_type, self.focus_id)


@dataclass(frozen=True)
class Task:
    """A coordinator task as stored."""

    id: str
    rule_id: str
    source: str
    focus_type: str
    focus_id: str
    focus_version: str | None
    patient: str | None
    queue: str
    kind: str
    title: str
    priority: Priority
    due: datetime | None
    status: TaskStatus
    assignee: str | None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    mirror_id: str | None = None
    mirror_version: str | None = None
    description: str | None = None
    labels: tuple[str, ...] = ()

    @classmethod
    def from_draft(cls, draft: TaskDraft, now: datetime) -> Task:
        """A new open task for `draft`."""
        return cls(
            id=draft.id,
            rule_id=draft.rule_id,
            source=draft.source,
            focus_type=draft.focus_type,
            focus_id=draft.focus_id,
            focus_version=draft.focus_version,
            patient=draft.patient,
            queue=draft.queue,
            kind=draft.kind,
            title=draft.title,
            priority=draft.priority,
            due=draft.due,
            status=TaskStatus.OPEN,
            assignee=draft.assignee,
            created_at=now,
            updated_at=now,
            description=draft.description,
            labels=draft.labels,
        )

    def refreshed(self, draft: TaskDraft, now: datetime) -> Task | None:
        """This task updated from a newer draft, or None when nothing a coordinator sees changed."""
        fields = {
            "focus_version": draft.focus_version,
            "patient": draft.patient,
            "queue": draft.queue,
            "kind": draft.kind,
            "title": draft.title,
            "priority": draft.priority,
            "due": draft.due,
            "description": draft.description,
            "labels": draft.labels,
        }
        if all(getattr(self, k) == v for k, v in fields.items()):
            return None
        return replace(self, **fields, updated_at=now, version=self.version + 1)  # type: ignore[arg-type]

    @property
    def is_active(self) -> bool:
        """True while a coordinator still has to act (open or in progress)."""
        return self.status in (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)

    @property
    def focus(self) -> str:
        """The focus resource as a relative reference."""
        return f"{self.focus_type}/{self.focus_id}"


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's history: who changed what, when."""

    task_id: str
    at: datetime
    actor: str
    action: str
    from_status: str | None = None
    to_status: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# The outbox action that mirrors a task as a FHIR Task in its source.
MIRROR_ACTION = "task-mirror"


class OutboxStatus(StrEnum):
    """Delivery state of an outbox entry."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # a permanent failure or a spent retry budget; `detail` has the outcome
    CONFLICT = "conflict"  # the EHR moved on: not written; `detail` has the diff
    DISCARDED = "discarded"  # an operator gave up on it


@dataclass(frozen=True)
class OutboxDraft:
    """A write to a FHIR server, recorded in the same transaction as the change that caused it."""

    task_id: str
    source: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox entry as stored, with its delivery bookkeeping."""

    id: int
    task_id: str
    source: str
    action: str
    payload: dict[str, Any]
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    detail: dict[str, Any] | None = None  # why it is dead or in conflict (outcome, diff)


@dataclass(frozen=True)
class TaskChange:
    """The result of a change to a task: its new state, the history event and writes to send."""

    task: Task
    event: TaskEvent
    outbox: tuple[OutboxDraft, ...] = ()
