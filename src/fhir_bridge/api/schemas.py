"""Request and response bodies of the coordinator API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fhir_bridge.tasks.model import Task, TaskEvent, TaskStatus, allowed_transitions


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: a stable code, a sentence, and details where useful."""

    error: str = Field(examples=["illegal_transition"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class TaskOut(BaseModel):
    """A task as coordinators see it."""

    id: str
    queue: str
    kind: str
    title: str
    status: TaskStatus
    priority: str
    due: datetime | None
    assignee: str | None
    patient: str | None
    source: str
    focus: str
    focus_version: str | None
    rule_id: str
    created_at: datetime
    updated_at: datetime
    version: int
    allowed_transitions: list[str]
    mirror: str | None = Field(description="the FHIR Task mirroring this task in its source")

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        """Build from the domain task."""
        return cls(
            id=task.id,
            queue=task.queue,
            kind=task.kind,
            title=task.title,
            status=task.status,
            priority=task.priority.value,
            due=task.due,
            assignee=task.assignee,
            patient=task.patient,
            source=task.source,
            focus=task.focus,
            focus_version=task.focus_version,
            rule_id=task.rule_id,
            created_at=task.created_at,
            updated_at=task.updated_at,
            version=task.version,
            allowed_transitions=allowed_transitions(task.status),
            mirror=f"Task/{task.mirror_id}" if task.mirror_id else None,
        )


class EventOut(BaseModel):
    """One change in a task's history."""

    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: TaskEvent) -> EventOut:
        """Build from the domain event."""
        return cls(
            at=event.at,
            actor=event.actor,
            action=event.action,
            from_status=event.from_status,
            to_status=event.to_status,
            detail=event.detail,
        )


class WritebackOut(BaseModel):
    """Delivery state of one write to the source."""

    id: int
    action: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    detail: dict[str, Any] | None = Field(
        default=None, description="for a conflict: which fields, ours vs theirs"
    )


class TaskDetail(BaseModel):
    """A task with its focus resource, history and write-back state."""

    task: TaskOut
    focus_resource: dict[str, Any] | None
    history: list[EventOut]
    writeback: list[WritebackOut]


class TaskList(BaseModel):
    """One page of tasks."""

    items: list[TaskOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class QueueOut(BaseModel):
    """A queue with its task counts by status."""

    queue: str
    counts: dict[str, int]
    total: int
    open: int = Field(description="tasks still to do (open + in-progress)")
    tasks_url: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClaimIn(_Body):
    """Who claims the task."""

    coordinator: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    version: int | None = Field(
        default=None, description="the task version you read (optimistic lock)"
    )


class StatusIn(ClaimIn):
    """A status change."""

    status: TaskStatus
    note: str | None = Field(default=None, max_length=2000)


class QuarantineOut(BaseModel):
    """A quarantined resource, with why it was refused (the body is not shown here)."""

    source: str
    resource_type: str
    resource_id: str | None
    version_id: str | None
    at: datetime
    issues: list[dict[str, Any]]


class QuarantineList(BaseModel):
    """One page of quarantine."""

    items: list[QuarantineOut]
    total: int
