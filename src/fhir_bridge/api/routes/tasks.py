"""One task: read it, claim it, change its status."""

from __future__ import annotations

from fastapi import APIRouter

from fhir_bridge.api.deps import BridgeDep
from fhir_bridge.api.schemas import (
    ClaimIn,
    ErrorBody,
    EventOut,
    StatusIn,
    TaskDetail,
    TaskOut,
    WritebackOut,
)
from fhir_bridge.errors import TaskNotFound

router = APIRouter(prefix="/tasks", tags=["tasks"])

_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such task"},
    409: {"model": ErrorBody, "description": "illegal transition or task held by someone else"},
    422: {"model": ErrorBody, "description": "malformed request"},
}


@router.get("/{task_id}", response_model=TaskDetail, responses=_ERRORS)
def read_task(bridge: BridgeDep, task_id: str) -> TaskDetail:
    """A task with its focus resource (as last synced), history and write-back state."""
    task = bridge.store.get_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    focus = bridge.store.get_resource(task.source, task.focus_type, task.focus_id)
    return TaskDetail(
        task=TaskOut.of(task),
        focus_resource=focus.body if focus else None,
        history=[EventOut.of(e) for e in bridge.store.task_history(task_id)],
        writeback=[
            WritebackOut(
                id=e.id,
                action=e.action,
                status=e.status.value,
                attempts=e.attempts,
                last_error=e.last_error,
                created_at=e.created_at,
                delivered_at=e.delivered_at,
                detail=e.detail,
            )
            for e in bridge.store.list_outbox(task_id=task_id)
        ],
    )


@router.post("/{task_id}/claim", response_model=TaskOut, responses=_ERRORS)
def claim_task(bridge: BridgeDep, task_id: str, body: ClaimIn) -> TaskOut:
    """Take an open task: it becomes in-progress and yours."""
    task = bridge.tasks.claim(task_id, body.coordinator, body.version)
    bridge.metrics.observe_task_claimed(task, task.updated_at)
    return TaskOut.of(task)


@router.post("/{task_id}/status", response_model=TaskOut, responses=_ERRORS)
def change_status(bridge: BridgeDep, task_id: str, body: StatusIn) -> TaskOut:
    """Move a task to another status; the change is written back to the source EHR."""
    task = bridge.tasks.change_status(
        task_id, body.status, body.coordinator, note=body.note, expected_version=body.version
    )
    bridge.metrics.observe_task_closed(task, task.updated_at)
    return TaskOut.of(task)
