"""Request and response bodies of the coordinator API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

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
    description: str | None = Field(description="what to do, in words (the rule's template)")
    labels: list[str]
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
            description=task.description,
            labels=list(task.labels),
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


class CommentOut(BaseModel):
    """A coordinator's comment on a task."""

    at: datetime
    author: str
    text: str

    @classmethod
    def of(cls, event: TaskEvent) -> CommentOut:
        """Build from a history event whose action is "comment"."""
        return cls(at=event.at, author=event.actor, text=str(event.detail.get("text", "")))


class TaskDetail(BaseModel):
    """A task with its focus resource, history, comments and write-back state."""

    task: TaskOut
    focus_resource: dict[str, Any] | None
    history: list[EventOut] = Field(description="every change, comments included, oldest first")
    comments: list[CommentOut] = Field(default_factory=list, description="oldest first")
    writeback: list[WritebackOut]


class TaskList(BaseModel):
    """One page of tasks; follow `next_cursor` (or `next_offset`) for the next page."""

    items: list[TaskOut]
    total: int = Field(description="every task matching the filters, whatever the page")
    limit: int
    offset: int
    next_offset: int | None
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the next page; None on the last page"
    )


class QueueOut(BaseModel):
    """A queue with its task counts by status and by deadline."""

    queue: str
    counts: dict[str, int]
    total: int
    open: int = Field(description="tasks still to do (open + in-progress)")
    overdue: int = Field(default=0, description="open or in-progress tasks past their due time")
    due_today: int = Field(
        default=0, description="open or in-progress tasks due from now to the end of the UTC day"
    )
    tasks_url: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Coordinator = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")]


class ClaimIn(_Body):
    """Who claims the task."""

    coordinator: Coordinator
    version: int | None = Field(
        default=None,
        description="the task version you read (optimistic lock; the If-Match header wins)",
    )


class ReleaseIn(ClaimIn):
    """Who gives the task back."""


class AssignIn(ClaimIn):
    """Who assigns the task, and to whom."""

    assignee: Coordinator


class CommentIn(ClaimIn):
    """A comment for the task's history (kept in the store, never logged)."""

    text: str = Field(min_length=1, max_length=4000)


class BulkAssignIn(_Body):
    """Assign several tasks to one coordinator."""

    coordinator: Coordinator
    assignee: Coordinator
    ids: list[str] = Field(min_length=1, max_length=200)


class BulkItemOut(BaseModel):
    """What happened to one task of a bulk request."""

    id: str
    ok: bool
    status_code: int = Field(description="the status a single request would have had")
    error: str | None = None
    message: str | None = None
    task: TaskOut | None = None


class BulkOut(BaseModel):
    """Per-task results of a bulk request, in the order asked."""

    results: list[BulkItemOut]
    succeeded: int
    failed: int


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
